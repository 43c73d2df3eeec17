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
from sfpn.modeling.semantic_head import LOSS_AVERAGES, shrink_bilinear
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


@pytest.mark.parametrize("finest", [(13, 15), (12, 16)])
@pytest.mark.parametrize("target_level", [0, 1, 2])
def test_forward_and_gradients_follow_the_papers_order(generator, target_level, finest):
    """The head shrinks a level finer than the target before its 1x1 conv; the paper's order (every
    lateral conv at its own level's size, then resized and summed) gives the same logits, embedding
    and gradients, float64, with odd sizes and with levels of exactly twice the size (the 2x2 mean)."""
    in_channels = [6, 8, 8, 10]
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    head = SemanticHead(in_channels, num_classes=5, channels=16, num_convs=2, embed_channels=12, num_groups=4,
                        target_level=target_level).double()
    features = [f.double().requires_grad_() for f in pyramid(generator, in_channels, finest=finest)]

    def papers_order(features):
        size = features[target_level].shape[-2:]
        x = sum(F.interpolate(lateral(f), size=size, mode="bilinear", align_corners=False)
                for lateral, f in zip(head.laterals, features))
        for conv, norm in zip(head.convs, head.norms):
            x = F.relu(norm(conv(x)))
        return head.logits(x), F.relu(head.embed(x))

    outputs = []
    for forward in (head, papers_order):
        logits, embedding = forward(features)
        if not outputs:  # one random gradient for both
            weights = [torch.randn(t.shape, generator=generator, dtype=t.dtype) for t in (logits, embedding)]
        gradients = torch.autograd.grad((logits * weights[0]).sum() + (embedding * weights[1]).sum(),
                                        [*features, *head.parameters()])
        outputs.append((logits, embedding, gradients))
    (logits, embedding, gradients), expected = outputs
    tol = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logits, expected[0], **tol)
    torch.testing.assert_close(embedding, expected[1], **tol)
    for ours, theirs in zip(gradients, expected[2]):
        torch.testing.assert_close(ours, theirs, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, size", [((12, 16), (6, 8)), ((12, 16), (3, 4)), ((13, 15), (7, 8)), ((5, 4), (5, 2))])
def test_shrink_bilinear_is_interpolate(generator, dtype, shape, size):
    """Exact halving (the first case) takes the 2x2 mean; the other sizes interpolate. Both match
    F.interpolate's bilinear values and gradient, channels_last kept."""
    x = torch.randn(2, 3, *shape, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 3, *size, generator=generator).to(dtype)
    outputs = []
    for shrink in (shrink_bilinear, lambda t, s: F.interpolate(t, size=s, mode="bilinear", align_corners=False)):
        leaf = x.clone().requires_grad_()
        out = shrink(leaf, list(size))
        out.backward(grad)
        outputs.append((out, leaf.grad))
    (out, grad_x), (expected, expected_grad) = outputs
    tol = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6),
           torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}[dtype]
    torch.testing.assert_close(out, expected, **tol)
    torch.testing.assert_close(grad_x, expected_grad, **tol)
    assert out.is_contiguous(memory_format=torch.channels_last)


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


def _expected_loss(logits, labels, loss_average, num_thing_classes):
    """The loss from its definition, with F.cross_entropy on explicitly upsampled logits and
    Python loops over the classes."""
    if labels.shape[-2:] != logits.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    labelled = labels != 255
    if not labelled.any():
        return per_pixel.sum() * 0
    if loss_average == "pixels":
        return per_pixel[labelled].mean()
    if loss_average == "median_frequency":
        present = [c for c in range(logits.shape[1]) if (labels == c).any()]
        counts = sorted(int((labels == c).sum()) for c in present)
        median = counts[(len(counts) - 1) // 2]  # the lower middle value
        weights = {c: median / int((labels == c).sum()) for c in present}
        total = sum(weights[c] * per_pixel[labels == c].sum() for c in present)
        return total / sum(weights[c] * int((labels == c).sum()) for c in present)
    thing = labelled & (labels > 0) & (labels <= num_thing_classes)
    means = [per_pixel[group].mean() for group in (thing, labelled & ~thing) if group.any()]
    return torch.stack(means).mean()


@pytest.mark.parametrize("loss_average", LOSS_AVERAGES)
@pytest.mark.parametrize("full_size_labels", [False, True])
@pytest.mark.parametrize("present", ["both", "background only", "foreground only", "none labelled"])
@pytest.mark.parametrize("num_thing_classes", [None, 2])
def test_loss_averages_match_their_definition(generator, loss_average, full_size_labels, present, num_thing_classes):
    """On fresh random logits and labels (in float64, so the comparison is tight), for batches with
    both pixel groups (things; background and stuff), one of them, or none labelled; with every
    class but 0 a thing, or classes 3 and 4 stuff; and the gradient flows in every case."""
    head = SemanticHead([8, 8], num_classes=5, channels=8, num_groups=4, loss_average=loss_average,
                        num_thing_classes=num_thing_classes)
    logits = torch.randn(2, 5, 6, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    label_size = (12, 16) if full_size_labels else (6, 8)
    labels = torch.randint(1, 5, (2, *label_size), generator=generator)
    labels[torch.rand(labels.shape, generator=generator) < 0.6] = 0  # background-heavy, as real maps
    labels[torch.rand(labels.shape, generator=generator) < 0.2] = 255
    if present == "background only":
        labels[(labels > 0) & (labels != 255)] = 0
    elif present == "foreground only":
        labels[labels == 0] = 1
    elif present == "none labelled":
        labels[:] = 255
    loss = head.loss(logits, labels)
    expected = _expected_loss(logits, labels, loss_average, 4 if num_thing_classes is None else num_thing_classes)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
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


def test_median_frequency_weighs_each_present_class_as_the_median_one(generator):
    """Per class, weight x pixels is the same for every class present: a class of 6 pixels
    carries as much of the loss as one of 60, and an absent class gets weight 0."""
    from sfpn.modeling.semantic_head import class_pixel_counts, median_frequency_weights

    labels = torch.zeros(2, 10, 10, dtype=torch.int64)
    labels[0, :6, 0] = 2  # 6 pixels
    labels[1, :6, :10] = 3  # 60 pixels
    labels[1, 9, :] = 255  # ignored
    counts = class_pixel_counts(labels, num_classes=5)
    assert counts.tolist() == [124, 0, 6, 60, 0]
    weights = median_frequency_weights(counts)
    torch.testing.assert_close(weights, torch.tensor([60 / 124, 0.0, 10.0, 1.0, 0.0], dtype=torch.float64))
    assert not median_frequency_weights(torch.zeros(5)).any()


@pytest.mark.parametrize("ignore_index", [255, 3])
@pytest.mark.parametrize("count", ["class_pixel_counts", "_counts_by_bincount", "_counts_by_scatter"])
def test_class_pixel_counts_against_a_count_per_class(generator, ignore_index, count):
    """Random labels with ignored pixels and labels past K: each class's count, the ignored label
    (inside or outside the classes) and labels past K counted nowhere, by either way of counting
    (the CPU's bincount, other devices' scatter); the bincount refuses a negative label."""
    from sfpn.modeling import semantic_head

    count_pixels = getattr(semantic_head, count)
    labels = torch.randint(0, 7, (3, 17, 23), generator=generator)
    labels[labels == 6] = ignore_index
    counts = count_pixels(labels, num_classes=5, ignore_index=ignore_index)
    want = [0 if k == ignore_index else int((labels == k).sum()) for k in range(5)]
    assert counts.dtype == torch.int64 and counts.tolist() == want
    assert count_pixels(labels[:0], num_classes=5, ignore_index=255).tolist() == [0] * 5
    if count != "_counts_by_scatter":
        labels[1, 2, 3] = -1
        with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 5\) or ignore_index 255, got -1"):
            count_pixels(labels, num_classes=5, ignore_index=255)


@needs_kernels
@pytest.mark.parametrize("loss_average", LOSS_AVERAGES)
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
