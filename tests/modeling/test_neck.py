"""The FPN/SFPN neck (sfpn/modeling/neck.py): shapes and the semantic loss, the loss average
from the config, fusion options, the neck without its branch equal to FPN, bad options,
torch.compile."""
import pytest
import torch

from sfpn.modeling import FPN, SFPN
from sfpn.modeling.neck import DOWNSAMPLE_MODES, FUSION_OPS, FUSION_POINTS

pytestmark = pytest.mark.usefixtures("single_thread")


SMALL_CHANNELS = [16, 32, 64, 128]  # C2..C5 of ResNet(18, width=16)


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
    assert sfpn.build_detector("faster_rcnn_r18_sfpn_small", num_classes=4).neck.semantic_head.loss_average == "median_frequency"
    with pytest.raises(ValueError, match="loss_average"):
        _small_sfpn(semantic_loss_average="per_class")
    # The neck weighs the head's loss, whichever average it takes.
    neck = _small_sfpn(alpha=0.5, semantic_loss_average="foreground_background")
    maps = _backbone_maps(generator)
    labels = torch.randint(0, 5, (2, 64, 96), generator=generator)
    _, logits, losses = neck(maps, labels)
    torch.testing.assert_close(losses["loss_segm"], 0.5 * neck.semantic_head.loss(logits, labels))


@pytest.mark.parametrize("fusion_point", [point for point in FUSION_POINTS if point != "none"])
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


@pytest.mark.parametrize("fusion_op", FUSION_OPS)
def test_unfused_branch_is_panoptic_fpn(generator, fusion_op):
    """``fusion_point="none"``: the pyramid is FPN's exactly, the branch reads its outputs (its
    loss trains the FPN layers below it) and has no embedding nor fusion layers."""
    neck = _small_sfpn(fusion_point="none", fusion_op=fusion_op, alpha=0.5)
    assert neck.semantic_head.embed is None and neck.fusion_convs is None
    plain = _small_sfpn(semantic=False)
    plain.load_state_dict(neck.state_dict(), strict=False)
    maps = _backbone_maps(generator)
    labels = torch.randint(0, 5, (2, 64, 96), generator=generator)
    pyramid, logits, losses = neck(maps, labels)
    baseline, _, _ = plain(maps)
    for name in baseline:
        assert torch.equal(pyramid[name], baseline[name])
    expected_logits, _ = neck.semantic_head(list(baseline.values())[:4])
    torch.testing.assert_close(logits, expected_logits)
    losses["loss_segm"].backward()
    assert neck.output_convs[0].weight.grad.abs().sum() > 0  # the branch reads the outputs


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
