"""``python -m sfpn.export``: the exported program, loaded in a fresh process, gives the eager
detector's detections; bad arguments and inputs outside the interface are clear errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

import sfpn
from sfpn.engine.checkpoint import config_to_dict, save_checkpoint
from sfpn.export import METADATA_FILE, MODEL_FILE, export_detector, main

PRESET = "mask_rcnn_r18_sfpn_small"  # every output: boxes, scores, labels, masks, semantic (+ logits)
CLASSES = ["circle", "square", "triangle"]
BATCH = 2
# Traced at one size, run at others (H and W are dynamic multiples of 32).
EXAMPLE_SIZE = (128, 160)
RUN_SIZES = [(128, 160), (192, 128), (256, 320)]

# The fresh process: only `import sfpn` (which registers torch.ops.sfpn.*) and torch.export.load.
LOAD_AND_RUN = """
import sys, torch
import sfpn  # noqa: F401
program = torch.export.load(sys.argv[1]).module()
batches = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save([program(images) for images in batches], sys.argv[3])
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A randomly initialised detector saved as a checkpoint and exported from it with the CLI.

    The score threshold sits amid the untrained class probabilities (about 1 / 4 each), so the
    number of detections varies from image to image.
    """
    torch.manual_seed(0)
    model = sfpn.build_detector(PRESET, num_classes=len(CLASSES), **{"roi_heads.score_threshold": 0.25}).eval()
    folder = tmp_path_factory.mktemp("export")
    checkpoint = str(folder / "model_final.pth")
    meta = {"preset": PRESET, "classes": CLASSES, "model_config": config_to_dict(model.config)}
    save_checkpoint(checkpoint, {"model": model.state_dict(), "meta": meta})
    output_dir = str(folder / "exported")
    main([output_dir, "--checkpoint", checkpoint, "--batch-size", str(BATCH),
          "--height", str(EXAMPLE_SIZE[0]), "--width", str(EXAMPLE_SIZE[1])])
    return model, output_dir


@pytest.mark.slow
@pytest.mark.usefixtures("without_winograd")  # the program convolves as ATen does: so must eager, for equal masks
def test_fresh_process_matches_eager(exported, tmp_path):
    model, output_dir = exported
    batches = [torch.rand(BATCH, 3, h, w) for h, w in RUN_SIZES]
    torch.save(batches, tmp_path / "batches.pt")
    subprocess.run(
        [sys.executable, "-c", LOAD_AND_RUN, os.path.join(output_dir, MODEL_FILE), str(tmp_path / "batches.pt"),
         str(tmp_path / "detections.pt")],
        check=True, timeout=600,
    )
    exported_detections = torch.load(tmp_path / "detections.pt")
    counts = []
    with torch.no_grad():
        for images, got in zip(batches, exported_detections):
            expected = model(list(images))
            assert len(got) == len(expected) == BATCH
            for g, e in zip(got, expected):
                assert sorted(g) == sorted(e) == ["boxes", "labels", "masks", "scores", "semantic", "semantic_logits"]
                torch.testing.assert_close(g["boxes"], e["boxes"], rtol=1e-5, atol=1e-4)
                torch.testing.assert_close(g["scores"], e["scores"], rtol=1e-5, atol=1e-6)
                assert torch.equal(g["labels"], e["labels"])
                assert torch.equal(g["masks"], e["masks"])
                assert torch.equal(g["semantic"], e["semantic"])
                torch.testing.assert_close(g["semantic_logits"], e["semantic_logits"], rtol=1e-5, atol=1e-5)
                assert g["masks"].shape[1:] == g["semantic"].shape == images.shape[-2:]
                counts.append(len(e["boxes"]))
    assert sum(counts) > 0, "no detections to compare: the test would prove nothing"

    metadata = json.loads(open(os.path.join(output_dir, METADATA_FILE)).read())
    assert metadata["classes"] == CLASSES
    assert metadata["outputs"] == ["boxes", "scores", "labels", "masks", "semantic", "semantic_logits"]
    assert metadata["input"]["shape"] == [BATCH, 3, "H", "W"]


@pytest.mark.slow
def test_program_rejects_sizes_outside_its_interface(exported):
    program = torch.export.load(os.path.join(exported[1], MODEL_FILE)).module()
    for shape in [(BATCH, 3, 100, 160), (BATCH + 1, 3, 128, 160), (BATCH, 3, 96, 160)]:
        with pytest.raises(Exception, match="images"):
            program(torch.rand(shape))


@pytest.mark.slow
@pytest.mark.parametrize("override, value", [("rpn.min_size", 1e4), ("roi_heads.score_threshold", 1.0)])
def test_no_proposals_or_no_detections(override, value):
    """No proposals survive (min_size beyond the image), or none of them scores enough (a score
    must exceed the threshold, and none exceeds 1): the program returns empty detections (and
    empty masks) as eager does, not an error."""
    model = sfpn.build_detector("mask_rcnn_r18_fpn_small", num_classes=2, **{override: value}).eval()
    program = export_detector(model, batch_size=1, height=128, width=128).module()
    images = torch.rand(1, 3, 160, 128)
    with torch.no_grad():
        got, expected = program(images)[0], model(list(images))[0]
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in expected.items()} == {
        "boxes": (0, 4), "scores": (0,), "labels": (0,), "masks": (0, 160, 128)}


@pytest.mark.parametrize("argv, message", [
    (["--preset", "faster_rcnn_r18_fpn_small"], "--preset needs --num-classes"),
    (["--preset", "faster_rcnn_r18_fpn_small", "--num-classes", "2", "--height", "100"], "height must be a multiple of 32"),
    (["--preset", "faster_rcnn_r18_fpn_small", "--num-classes", "2", "--set", "neck.alpha"], "--set expects KEY=VALUE"),
    (["--preset", "no_such_preset", "--num-classes", "2"], "unknown preset"),
    (["--checkpoint", "/nonexistent/model.pth"], "checkpoint not found"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message):
        main([str(tmp_path), *argv])
    assert not os.path.exists(tmp_path / MODEL_FILE)


def test_export_detector_checks_its_sizes():
    model = sfpn.build_detector("faster_rcnn_r18_fpn_small", num_classes=2)
    with pytest.raises(ValueError, match="batch_size"):
        export_detector(model, batch_size=0)
    with pytest.raises(ValueError, match="max_size"):
        export_detector(model, max_size=1000)
    with pytest.raises(ValueError, match=r"width must be a multiple of 32 .* got 4096"):
        export_detector(model, width=4096)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["faster_rcnn_r18_sfpn_small", "mask_rcnn_r18_sfpn_small"])
def test_panoptic_outputs_match_the_eager_merge(preset):
    """``panoptic=True``: the traced merge (a scan over the instances) gives the eager
    ``panoptic_merge``'s segment map and segments, for box-only and mask detectors, at a size
    other than the traced one; a detector without the branch is refused."""
    from sfpn.modeling.panoptic import panoptic_merge

    torch.manual_seed(0)
    overrides = {"num_stuff_classes": 2, "roi_heads.score_threshold": 0.25, "panoptic.score_threshold": 0.0,
                 "panoptic.stuff_min_area": 64}
    model = sfpn.build_detector(preset, num_classes=3, **overrides).eval()
    program = export_detector(model, batch_size=1, height=128, width=128, panoptic=True).module()
    config = model.config.panoptic
    instances = 0
    for size in [(128, 128), (160, 192)]:
        images = torch.rand(1, 3, *size)
        with torch.no_grad():
            got, expected = program(images)[0], model(list(images))[0]
        segment_ids, segments = panoptic_merge(
            expected["boxes"], expected["scores"], expected["labels"], expected["semantic"],
            label_to_semantic={1: 1, 2: 2, 3: 3}, stuff_classes=(4, 5), score_threshold=config.score_threshold,
            overlap_threshold=config.overlap_threshold, stuff_min_area=config.stuff_min_area, masks=expected.get("masks"))
        assert torch.equal(got["panoptic"], segment_ids)
        things = {s["id"]: s for s in segments if s["isthing"]}
        for d, segment_id in enumerate(got["panoptic_instance_ids"].tolist()):
            if segment_id:
                assert things.pop(segment_id)["score"] == pytest.approx(float(expected["scores"][d]))
        assert not things  # every instance segment belongs to one detection
        stuff = {s["category_id"]: s["id"] for s in segments if not s["isthing"]}
        assert got["panoptic_stuff_ids"].tolist() == [stuff.get(4, 0), stuff.get(5, 0)]
        instances += sum(s["isthing"] for s in segments)
    assert instances > 0, "no instance in any result: the test would prove little"
    with pytest.raises(ValueError, match="needs an SFPN detector"):
        export_detector(sfpn.build_detector("faster_rcnn_r18_fpn_small", num_classes=2), height=128, width=128, panoptic=True)
