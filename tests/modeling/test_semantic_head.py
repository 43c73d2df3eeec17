"""SemanticHead: shapes, options, the loss averages, and the fused path against the reference
path (same weights). The class map's op, upsample_argmax: tests/ops/test_upsample_argmax.py.

The fused path runs the Triton kernels: on the GPU when present, else under the interpreter
(tiny shapes: the interpreter is slow).
"""
import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

from sfpn import kernels
from sfpn.modeling import SemanticHead
from sfpn.ops import _library


needs_kernels = pytest.mark.skipif(
    not kernels.AVAILABLE or not (torch.cuda.is_available() or kernels.INTERPRETING),
    reason="needs Triton and a GPU or TRITON_INTERPRET=1",
)


def pyramid(generator, in_channels, batch=2, finest=(12, 16), device="cpu"):
    """Maps at strides 4, 8, 16, ... of an image; odd division on purpose at the coarse end."""
    height, width = finest
    maps = []
    for i, channels in enumerate(in_channels):
        size = (max(1, -(-height // 2**i)), max(1, -(-width // 2**i)))
        maps.append(torch.randn(batch, channels, *size, generator=generator).to(device))
    return maps


# ------------------------------------------------------------------------------------------------
# The head


def test_shapes_and_options(generator):
    head = SemanticHead([8, 8, 8, 8], num_classes=5, channels=16, num_convs=2, embed_channels=12, num_groups=4)
    features = pyramid(generator, [8, 8, 8, 8], finest=(12, 15))
    logits, embedding = head(features)
    assert logits.shape == (2, 5, 6, 8) and embedding.shape == (2, 12, 6, 8)
    assert (embedding >= 0).all()
    logits, _ = head(features, compute_logits=False)
    assert logits is None


def test_bad_configuration():
    with pytest.raises(ValueError, match="num_groups"):
        SemanticHead([8, 8], num_classes=3, channels=20, num_groups=8)
    with pytest.raises(ValueError, match="target_level"):
        SemanticHead([8], num_classes=3, channels=8, num_groups=4)
    with pytest.raises(ValueError, match="in_channels"):
        SemanticHead([8] * 6, num_classes=3, channels=8, num_groups=4)
    with pytest.raises(ValueError, match="loss_average"):
        SemanticHead([8, 8], num_classes=3, channels=8, num_groups=4, loss_average="classes")
    head = SemanticHead([8, 8], num_classes=3, channels=8, num_groups=4)
    with pytest.raises(ValueError, match="features must hold 2 levels"):
        head([torch.zeros(1, 8, 4, 4)])


def _expected_loss(logits, labels, loss_average):
    """The loss from its definition, with F.cross_entropy on explicitly upsampled logits."""
    if labels.shape[-2:] != logits.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    labelled = labels != 255
    if loss_average == "pixels":
        return per_pixel[labelled].mean() if labelled.any() else per_pixel.sum() * 0
    means = [per_pixel[group].mean() for group in (labelled & (labels > 0), labels == 0) if group.any()]
    return torch.stack(means).mean() if means else per_pixel.sum() * 0


@pytest.mark.parametrize("loss_average", ["pixels", "foreground_background"])
@pytest.mark.parametrize("full_size_labels", [False, True])
@pytest.mark.parametrize("present", ["both", "background only", "foreground only", "none labelled"])
def test_loss_averages_match_their_definition(generator, loss_average, full_size_labels, present):
    """On fresh random logits and labels (in float64, so the comparison is tight), for batches with
    both pixel groups, one of them, or none labelled; and the gradient flows in every case."""
    head = SemanticHead([8, 8], num_classes=5, channels=8, num_groups=4, loss_average=loss_average)
    logits = torch.randn(2, 5, 6, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    label_size = (12, 16) if full_size_labels else (6, 8)
    labels = torch.randint(1, 5, (2, *label_size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.6] = 0  # background-heavy, as real maps
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = 255
    if present == "background only":
        labels[(labels > 0) & (labels != 255)] = 0
    elif present == "foreground only":
        labels[labels == 0] = 3
    elif present == "none labelled":
        labels[:] = 255
    loss = head.loss(logits, labels)
    torch.testing.assert_close(loss, _expected_loss(logits, labels, loss_average), rtol=1e-10, atol=1e-12)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    if present == "none labelled":
        assert loss.item() == 0 and not logits.grad.any()


def test_foreground_background_average_weighs_the_groups_equally(generator):
    """Half the pixels' loss comes from each group whatever their counts: scaling the logits of
    the (rare) foreground pixels changes the loss by half their mean's change."""
    head = SemanticHead([8, 8], num_classes=3, channels=8, num_groups=4, loss_average="foreground_background")
    logits = torch.randn(1, 3, 10, 10, generator=generator, dtype=torch.float64)
    labels = torch.zeros(1, 10, 10, dtype=torch.int64)
    labels[0, :2, :3] = 2  # 6 foreground pixels against 94 background ones
    foreground = F.cross_entropy(logits, labels, reduction="none")[labels > 0].mean()
    background = F.cross_entropy(logits, labels, reduction="none")[labels == 0].mean()
    torch.testing.assert_close(head.loss(logits, labels), (foreground + background) / 2)


@needs_kernels
@pytest.mark.parametrize("loss_average", ["pixels", "foreground_background"])
@pytest.mark.parametrize("full_size_labels", [False, True])
def test_fused_path_matches_reference(device, generator, full_size_labels, loss_average):
    """Loss and every parameter gradient of the fused head equal those of the same head run on the
    references (``_library.references()``)."""
    in_channels = [6, 8, 8, 10]
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    reference_head = SemanticHead(in_channels, num_classes=7, channels=16, num_convs=2, embed_channels=8,
                                  num_groups=4, loss_average=loss_average).to(device)
    fused_head = copy.deepcopy(reference_head)
    features = pyramid(generator, in_channels, device=device)
    label_size = (12, 16) if full_size_labels else (6, 8)
    labels = torch.randint(0, 7, (2, *label_size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = 255
    labels = labels.to(device)

    results = []
    for head, registration in ((fused_head, contextlib.nullcontext()), (reference_head, _library.references())):
        inputs = [f.clone().requires_grad_() for f in features]
        with registration:
            logits, embedding = head(inputs)
            loss = head.loss(logits, labels)
            (loss + embedding.square().mean()).backward()
        results.append((loss, embedding, [p.grad for p in head.parameters()], [f.grad for f in inputs]))
    (loss, embedding, param_grads, input_grads), expected = results
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, expected[0], **tol)
    torch.testing.assert_close(embedding, expected[1], **tol)
    for ours, theirs in zip(param_grads + input_grads, expected[2] + expected[3]):
        torch.testing.assert_close(ours, theirs, **tol)
