"""The detector's building blocks: boxes, anchors, matcher, backbone and the FPN/SFPN neck."""
import math

import pytest
import torch
from torch import nn

from sfpn.config import RESNET_STAGES, resnet_channels
from sfpn.modeling import FPN, SFPN, AnchorGenerator, BoxCoder, FrozenBatchNorm2d, Matcher, ResNet, box_iou
from sfpn.modeling.matcher import BACKGROUND, FOREGROUND, IGNORE, sample_balanced
from sfpn.modeling.neck import DOWNSAMPLE_MODES, FUSION_OPS, FUSION_POINTS

SMALL_CHANNELS = [16, 32, 64, 128]  # C2..C5 of ResNet(18, width=16)


pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------ boxes
def test_box_iou_hand_computed():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 5.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    expected = torch.tensor([[25 / 175, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(box_iou(a, b), expected)


def test_box_coder_hand_computed():
    reference = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 20.0]])
    target = torch.tensor([[5.0, 5.0, 15.0, 25.0], [0.0, 0.0, 20.0, 10.0]])
    expected = torch.tensor([[0.5, 0.25, 0.0, 0.0], [0.5, -0.25, math.log(2.0), math.log(0.5)]])
    torch.testing.assert_close(BoxCoder().encode(reference, target), expected)
    weights = torch.tensor([10.0, 10.0, 5.0, 5.0])
    torch.testing.assert_close(BoxCoder(tuple(weights.tolist())).encode(reference, target), expected * weights)


def test_box_coder_round_trip_and_per_class_decoding(generator):
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    xy = torch.rand(50, 2, generator=generator) * 100
    reference = torch.cat((xy, xy + 1 + torch.rand(50, 2, generator=generator) * 50), dim=1)
    xy = torch.rand(50, 2, generator=generator) * 100
    target = torch.cat((xy, xy + 1 + torch.rand(50, 2, generator=generator) * 50), dim=1)
    deltas = coder.encode(reference, target)
    torch.testing.assert_close(coder.decode(deltas, reference), target, rtol=1e-5, atol=1e-3)
    # (K, 4C): every class column block decodes against the same reference.
    three = coder.decode(deltas.repeat(1, 3), reference).reshape(50, 3, 4)
    torch.testing.assert_close(three, target[:, None].expand(50, 3, 4), rtol=1e-5, atol=1e-3)


def test_box_coder_clamps_scale():
    coder = BoxCoder()
    boxes = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert torch.isfinite(boxes).all()
    torch.testing.assert_close(boxes[0, 2] - boxes[0, 0], torch.tensor(1000.0))


# ---------------------------------------------------------------------------------------- anchors
def test_anchors_hand_computed():
    generator = AnchorGenerator(sizes=(32.0,), aspect_ratios=(1.0, 4.0), strides=(8,))
    (anchors,) = generator([(2, 2)], torch.device("cpu"))
    square = torch.tensor([-16.0, -16.0, 16.0, 16.0])
    tall = torch.tensor([-8.0, -32.0, 8.0, 32.0])  # height / width = 4, area 32^2
    expected = []
    for y in (0.0, 8.0):  # (y, x, anchor) order
        for x in (0.0, 8.0):
            shift = torch.tensor([x, y, x, y])
            expected += [square + shift, tall + shift]
    torch.testing.assert_close(anchors, torch.stack(expected))


def test_anchors_per_level_counts_and_areas():
    sizes = (32.0, 64.0, 128.0, 256.0, 512.0)
    generator = AnchorGenerator(sizes, (0.5, 1.0, 2.0), (4, 8, 16, 32, 64))
    grids = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    levels = generator(grids, torch.device("cpu"))
    for anchors, (h, w), size in zip(levels, grids, sizes):
        assert anchors.shape == (h * w * 3, 4)
        area = (anchors[:, 2] - anchors[:, 0]) * (anchors[:, 3] - anchors[:, 1])
        torch.testing.assert_close(area, torch.full_like(area, size**2))


# ---------------------------------------------------------------------------------------- matcher
def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.8, 0.4, 0.1, 0.0, 0.3], [0.2, 0.5, 0.25, 0.0, 0.1]])
    index, label = Matcher(0.7, 0.3)(iou)
    assert index.tolist() == [0, 1, 1, 0, 0]
    assert label.tolist() == [FOREGROUND, IGNORE, BACKGROUND, BACKGROUND, IGNORE]  # 0.3 is not < 0.3
    index, label = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert label.tolist() == [FOREGROUND, FOREGROUND, BACKGROUND, BACKGROUND, IGNORE]


def test_matcher_low_quality_ignores_unmatchable_ground_truth():
    iou = torch.tensor([[0.0, 0.0, 0.0], [0.6, 0.6, 0.1]])  # box 0 overlaps nothing; box 1 ties
    _, label = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert label.tolist() == [FOREGROUND, FOREGROUND, BACKGROUND]


def test_matcher_without_ground_truth():
    index, label = Matcher(0.5, 0.5)(torch.zeros(0, 4))
    assert index.tolist() == [0] * 4 and label.tolist() == [BACKGROUND] * 4


def test_matcher_rejects_inverted_thresholds():
    with pytest.raises(ValueError, match="bg_threshold"):
        Matcher(0.3, 0.7)


@pytest.mark.parametrize("num_foreground", [2, 10])
def test_sample_balanced(num_foreground, generator):
    label = torch.full((115,), BACKGROUND, dtype=torch.int8)
    label[:num_foreground] = FOREGROUND
    label[-5:] = IGNORE
    positive, negative = sample_balanced(label, 20, 0.25, generator=generator)
    assert len(positive) == min(num_foreground, 5) and len(negative) == 20 - len(positive)
    assert (label[positive] == FOREGROUND).all() and (label[negative] == BACKGROUND).all()
    assert len(set(negative.tolist())) == len(negative)


# --------------------------------------------------------------------------------------- backbone
def test_resnet_shapes_and_freezing():
    model = ResNet(18, width=16, norm="bn", freeze_at=2)
    features = model(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]
    assert model.out_channels == SMALL_CHANNELS
    assert not any(p.requires_grad for p in [*model.conv1.parameters(), *model.layer1.parameters()])
    assert all(p.requires_grad for p in model.layer2.parameters())
    assert ResNet(50, freeze_at=0).out_channels == [256, 512, 1024, 2048]


@pytest.mark.parametrize("depth, refused", [(18, (5,)), (34, (5,)), (50, (3, 5)), (101, (3, 5))])
def test_resnet_channels_are_those_its_norms_normalise(depth, refused):
    """The config's GroupNorm rule reads resnet_channels: it must list the model's norm widths, so
    that a width the rule accepts builds with norm="gn" and one it refuses is refused by the model
    (width 5: 40 channels; 3: the bottlenecks' 48)."""
    assert set(RESNET_STAGES) == {18, 34, 50, 101}
    for width in (1, 3, 5, 8):
        norms = {m.num_features for m in ResNet(depth, width, "bn").modules() if isinstance(m, nn.BatchNorm2d)}
        assert resnet_channels(depth, width) == tuple(sorted(norms))
        if width in refused:
            with pytest.raises(ValueError, match=f"^width with norm='gn' must make every channel count of the ResNet-{depth}"):
                ResNet(depth, width, "gn")
        else:
            model = ResNet(depth, width, "gn")
            assert all(norm.num_channels % norm.num_groups == 0 for norm in model.modules() if isinstance(norm, nn.GroupNorm))


def test_frozen_batchnorm_matches_batchnorm_in_eval(generator):
    bn = nn.BatchNorm2d(8).eval()
    for name in ("weight", "bias", "running_mean"):
        getattr(bn, name).data = torch.randn(8, generator=generator)
    bn.running_var.data = torch.rand(8, generator=generator) + 0.5
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    x = torch.randn(2, 8, 5, 5, generator=generator)
    torch.testing.assert_close(frozen(x), bn(x))
    assert not list(frozen.parameters())


def test_resnet_loads_torchvision_checkpoint(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18().eval()
    for m in reference.modules():  # non-trivial statistics so frozen BN is really exercised
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = ResNet(18, norm="frozen_bn", weights=str(path)).eval()
    x = torch.rand(1, 3, 64, 64)
    body = nn.Sequential(*list(reference.children())[:-2])
    with torch.no_grad():
        torch.testing.assert_close(model(x)[-1], body(x), rtol=1e-4, atol=1e-5)


def test_resnet_rejects_mismatched_checkpoint(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(ResNet(18, width=16).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        ResNet(18, weights=str(path))
    with pytest.raises(FileNotFoundError):
        ResNet(18, weights=str(tmp_path / "missing.pth"))


# ------------------------------------------------------------------------------------------- neck
def _backbone_maps(generator, height=64, width=96):
    shapes = [(c, height // s, width // s) for c, s in zip(SMALL_CHANNELS, (4, 8, 16, 32))]
    return [torch.randn(2, *shape, generator=generator) for shape in shapes]


def _small_sfpn(**kwargs):
    kwargs.setdefault("num_semantic_classes", 5)
    return SFPN(SMALL_CHANNELS, 32, semantic_channels=32, semantic_convs=2, num_groups=8, **kwargs)


def test_sfpn_shapes_and_semantic_loss(generator):
    neck = _small_sfpn(alpha=0.3)
    maps = _backbone_maps(generator)
    pyramid, logits, no_losses = neck(maps)
    assert no_losses == {}  # no labels, no loss
    assert list(pyramid) == ["p2", "p3", "p4", "p5", "p6"]
    assert [tuple(p.shape) for p in pyramid.values()] == [
        (2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3), (2, 32, 1, 2)
    ]
    assert logits.shape == (2, 5, 8, 12)
    labels = torch.randint(0, 5, (2, 64, 96), generator=generator)
    labels[0, :10] = 255
    _, _, losses = neck(maps, labels)
    loss = losses["loss_segm"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    # The neck weighs its own loss.
    torch.testing.assert_close(loss, 0.3 * neck.semantic_head.loss(logits, labels))
    loss.backward()
    assert neck.lateral_convs[0].weight.grad is not None


def test_semantic_loss_average_reaches_the_head_from_the_config(generator):
    import sfpn

    model = sfpn.build_detector("faster_rcnn_r18_sfpn_small", num_classes=4, **{"neck.semantic_loss_average": "foreground_background"})
    assert model.neck.semantic_head.loss_average == "foreground_background"
    assert sfpn.build_detector("faster_rcnn_r18_sfpn_small", num_classes=4).neck.semantic_head.loss_average == "pixels"
    with pytest.raises(ValueError, match="loss_average"):
        _small_sfpn(semantic_loss_average="per_class")
    # The neck weighs the head's loss, whichever average it takes.
    neck = _small_sfpn(alpha=0.5, semantic_loss_average="foreground_background")
    maps = _backbone_maps(generator)
    labels = torch.randint(0, 5, (2, 64, 96), generator=generator)
    _, logits, losses = neck(maps, labels)
    torch.testing.assert_close(losses["loss_segm"], 0.5 * neck.semantic_head.loss(logits, labels))


@pytest.mark.parametrize("fusion_point", FUSION_POINTS)
@pytest.mark.parametrize("fusion_op", FUSION_OPS)
@pytest.mark.parametrize("downsample", DOWNSAMPLE_MODES)
def test_sfpn_fusion_options(fusion_point, fusion_op, downsample, generator):
    neck = _small_sfpn(fusion_point=fusion_point, fusion_op=fusion_op, downsample=downsample)
    plain = _small_sfpn(semantic=False)
    plain.load_state_dict(neck.state_dict(), strict=False)
    maps = _backbone_maps(generator)
    pyramid, logits, _ = neck(maps)
    baseline, _, _ = plain(maps)
    assert all(p.shape == b.shape for p, b in zip(pyramid.values(), baseline.values()))
    assert not torch.allclose(pyramid["p3"], baseline["p3"])  # the semantics did reach the pyramid
    sum(p.sum() for p in pyramid.values()).backward()
    assert neck.semantic_head.embed.weight.grad.abs().sum() > 0


def test_sfpn_without_branch_is_fpn_exactly(generator):
    fpn = FPN(SMALL_CHANNELS, 32)
    sfpn = _small_sfpn(semantic=False, alpha=0.0)
    assert sfpn.state_dict().keys() == fpn.state_dict().keys()
    sfpn.load_state_dict(fpn.state_dict())
    maps = _backbone_maps(generator)
    expected, no_logits, _ = fpn(maps)
    actual, logits, _ = sfpn(maps)
    assert logits is None and no_logits is None
    for name in expected:
        assert torch.equal(actual[name], expected[name])
    # The branch-on neck holds every FPN parameter under the same name.
    assert set(fpn.state_dict()) <= set(_small_sfpn().state_dict())


def test_neck_rejects_bad_options():
    with pytest.raises(ValueError, match="fusion_op"):
        _small_sfpn(fusion_op="multiply")
    with pytest.raises(ValueError, match="in_channels"):
        SFPN([16, 32, 64], 32)


def test_neck_compiles(generator):
    neck = _small_sfpn()
    maps = _backbone_maps(generator)
    expected, expected_logits, _ = neck(maps)
    compiled = torch.compile(neck, fullgraph=True)
    actual, logits, _ = compiled(maps)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-5)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5)
