"""ResNet backbones returning C2..C5, with frozen BatchNorm and torchvision-format weights."""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BLOCK_EXPANSION, RESNET_STAGES, BackboneConfig, check_group_norm_width, group_norm_groups
from ..overrides import allowed, check_value
from ..ops import batch_norm_relu, max_pool2d
from .layers import Conv2d, cpu_conv

NORMS = allowed(BackboneConfig, "norm")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (buffers, not parameters): the
    pretrained normalisation of a backbone fine-tuned with a few images per GPU.

    State-dict compatible with ``nn.BatchNorm2d`` (``num_batches_tracked`` is dropped on load).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = fixed_scale_and_shift(self)
        return x * scale.to(x.dtype)[None, :, None, None] + shift.to(x.dtype)[None, :, None, None]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


def fixed_affine_tensors(norm: nn.Module) -> tuple[torch.Tensor | None, ...] | None:
    """The tensors ``(weight, bias, running_mean, running_var)`` of ``norm`` when it is a fixed
    per-channel affine map, ``x * scale + shift``: a frozen BatchNorm, or a BatchNorm in eval mode
    that has running statistics (its affine parameters stay in the graph, so their gradients still
    flow; either may be None). None when ``norm`` normalises by the batch (a BatchNorm training) or
    is no BatchNorm."""
    evaluating = isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)) and not norm.training
    if isinstance(norm, FrozenBatchNorm2d) or (evaluating and norm.running_var is not None):
        return norm.weight, norm.bias, norm.running_mean, norm.running_var
    return None


def fixed_scale_and_shift(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, shift)``, each ``(C,)``, when ``norm`` is a fixed per-channel affine map
    (:func:`fixed_affine_tensors`); None otherwise."""
    tensors = fixed_affine_tensors(norm)
    if tensors is None:
        return None
    weight, bias, running_mean, running_var = tensors
    scale = (running_var + norm.eps).rsqrt()
    scale = scale * weight if weight is not None else scale
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None,
              relu: bool = False) -> torch.Tensor:
    """``relu(norm(conv(x)) + residual)`` for a bias-free ``conv``: the sum only with a ``residual``
    (the output's shape), the ReLU only with ``relu``. A fixed BatchNorm (:func:`fixed_scale_and_shift`:
    frozen, or a trained one in eval mode) is folded into the convolution (weights scaled per
    output channel, the shift as its bias): one pass over the activations instead of three, in the
    forward and in the backward alike, as the weights stay trainable. The folded convolution runs
    by :func:`~sfpn.modeling.layers.cpu_conv` where it applies: by Winograd's algorithm (a float32
    3x3 convolution), or, where nothing needs a gradient, with the sum and the ReLU as oneDNN
    post-ops (in an :class:`~sfpn.modeling.layers.InferenceWeightCache`, folded once). A BatchNorm training on the
    CPU, followed by the ReLU, runs with the sum and the ReLU as one op
    (:func:`~sfpn.ops.batch_norm_relu`): two passes over the activations forward and two backward,
    where ATen's BatchNorm, sum and ReLU make four and three."""
    norm_tensors = fixed_affine_tensors(norm)
    if norm_tensors is None:
        if relu and x.device.type == "cpu" and isinstance(norm, nn.BatchNorm2d) and norm.training and norm.affine:
            return _batch_norm_relu(norm, conv(x), residual)
        out = norm(conv(x))
    else:
        def folded() -> tuple[torch.Tensor, torch.Tensor]:
            scale, shift = fixed_scale_and_shift(norm)
            return conv.weight * scale.to(conv.weight.dtype)[:, None, None, None], shift.to(conv.weight.dtype)

        fused = cpu_conv(conv, x, folded, (conv.weight, *norm_tensors), residual, relu)
        if fused is not None:
            return fused
        weight, bias = folded()
        out = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    if residual is not None:
        out = out.add_(residual)  # in place: the sum is the one new map
    return F.relu(out, inplace=True) if relu else out


def _batch_norm_relu(norm: nn.BatchNorm2d, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """``relu(norm(x) + residual)`` for a training ``norm``, through the fused op, with the running
    statistics and their count updated as ``nn.BatchNorm2d.forward`` updates them."""
    momentum = norm.momentum
    if norm.track_running_stats:
        norm.num_batches_tracked.add_(1)
        if momentum is None:
            momentum = 1.0 / float(norm.num_batches_tracked)
    if residual is not None and residual.dtype != x.dtype:
        residual = residual.to(x.dtype)
    return batch_norm_relu(x, norm.weight, norm.bias, norm.running_mean, norm.running_var, residual, momentum, norm.eps)


def _stem_pool(x: torch.Tensor) -> torch.Tensor:
    """The stem's 3x3 max pooling, stride 2: sfpn's kernel, which writes no indices, where nothing
    needs a gradient; ATen's, which saves its indices for the backward, where one does."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    return max_pool2d(x, 3, 2, 1)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(group_norm_groups(channels), channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class BasicBlock(nn.Module):
    expansion = BLOCK_EXPANSION["basic"]

    def __init__(self, in_channels: int, width: int, stride: int, norm: str):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = Conv2d(in_channels, width, 3, stride, 1, bias=False)
        self.bn1 = make_norm(norm, width)
        self.conv2 = Conv2d(width, out_channels, 3, 1, 1, bias=False)
        self.bn2 = make_norm(norm, out_channels)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x):
        identity = _shortcut_forward(self.downsample, x)
        out = conv_norm(self.conv1, self.bn1, x, relu=True)
        return conv_norm(self.conv2, self.bn2, out, residual=identity, relu=True)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3 conv), as torchvision's weights expect."""

    expansion = BLOCK_EXPANSION["bottleneck"]

    def __init__(self, in_channels: int, width: int, stride: int, norm: str):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = make_norm(norm, width)
        self.conv2 = Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = make_norm(norm, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x):
        identity = _shortcut_forward(self.downsample, x)
        out = conv_norm(self.conv1, self.bn1, x, relu=True)
        out = conv_norm(self.conv2, self.bn2, out, relu=True)
        return conv_norm(self.conv3, self.bn3, out, residual=identity, relu=True)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), make_norm(norm, out_channels))


def _shortcut_forward(shortcut: nn.Sequential | None, x: torch.Tensor) -> torch.Tensor:
    return x if shortcut is None else conv_norm(shortcut[0], shortcut[1], x)


class ResNet(nn.Module):
    """ResNet-18/34/50/101 trunk returning ``[C2, C3, C4, C5]`` (strides 4, 8, 16, 32).

    Module names follow torchvision (``conv1, bn1, layer1..layer4``) so its ImageNet checkpoints
    load as they are.

    Args:
        depth: 18, 34, 50 or 101.
        width: channels of the first stage's 3x3 convs (64 in the standard nets; smaller for
            CPU-sized models, which then cannot load standard weights).
        norm: ``"frozen_bn"`` (pretrained fine-tuning), ``"bn"`` or ``"gn"`` (training from scratch).
        freeze_at: 0 trains everything, 1 freezes the stem, 2 the stem and ``layer1``, ... 5 all.
        weights: path of a torchvision-format ResNet state dict (``fc.*`` is ignored); nothing is
            ever downloaded.

    The defaults are :class:`sfpn.config.BackboneConfig`'s.

    forward(x ``(N, 3, H, W)``) -> list of ``(N, C_i, H / s_i, W / s_i)``, ``C_i = out_channels[i]``.
    """

    def __init__(self, depth: int = BackboneConfig.depth, width: int = BackboneConfig.width,
                 norm: str = BackboneConfig.norm, freeze_at: int = BackboneConfig.freeze_at,
                 weights: str | None = BackboneConfig.weights):
        super().__init__()
        check_value("depth", depth, allowed(BackboneConfig, "depth"))
        check_value("freeze_at", freeze_at, allowed(BackboneConfig, "freeze_at"))
        if norm == "gn":
            check_group_norm_width("width with norm='gn'", depth, width)
        kind, blocks = RESNET_STAGES[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = make_norm(norm, width)
        in_channels = width
        self.out_channels = []
        for stage, num_blocks in enumerate(blocks):
            stage_width = width * 2**stage
            layers = []
            for i in range(num_blocks):
                layers.append(block(in_channels, stage_width, 2 if i == 0 and stage > 0 else 1, norm))
                in_channels = stage_width * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layers))
            self.out_channels.append(in_channels)
        self._init_weights()
        if weights is not None:
            self.load_pretrained(weights)
        self.freeze(freeze_at)

    @classmethod
    def from_config(cls, config: BackboneConfig) -> ResNet:
        """The ResNet a :class:`~sfpn.config.BackboneConfig` describes."""
        return cls(**dataclasses.asdict(config))

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last norm of each residual branch: each block starts as the identity, which
        # makes training from scratch (the CPU presets) stable.
        for m in self.modules():
            last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
            if isinstance(m, (BasicBlock, Bottleneck)) and isinstance(last, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.zeros_(last.weight)

    def load_pretrained(self, path: str) -> None:
        """Loads a torchvision-format ResNet state dict from ``path`` (``fc.*`` ignored)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"backbone weights: no such file {path!r}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatches
            raise ValueError(f"backbone weights {path!r} do not fit this ResNet: {error}") from None
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(
                f"backbone weights {path!r} do not fit this ResNet: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def freeze(self, freeze_at: int) -> None:
        stages = [nn.ModuleList([self.conv1, self.bn1])] + [getattr(self, f"layer{i}") for i in range(1, 5)]
        for stage in stages[:freeze_at]:
            for p in stage.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = conv_norm(self.conv1, self.bn1, x, relu=True)
        x = _stem_pool(x)
        features = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)
        return features
