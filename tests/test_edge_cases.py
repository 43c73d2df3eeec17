"""Real-world COCO data that training and evaluation must survive: images
without annotations, crowd-only images, degenerate boxes, batches without foreground, zero
proposals, and grayscale / RGBA / palette / 16-bit / JPEG images, on a generated dataset that
every preset family trains and evaluates on."""
import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import sfpn
from sfpn.data import CocoDetection, build_transforms
from sfpn.data.coco import DegenerateBoxWarning
from sfpn.engine.config import training_config
from sfpn.engine.trainer import Trainer, seed_everything

pytestmark = pytest.mark.usefixtures("single_thread")

CATEGORIES = [{"id": 1, "name": "square"}, {"id": 2, "name": "disc"}]
#: Raw label-PNG value -> label for semantic="png" (everything else, e.g. 255, is ignored).
SEMANTIC_LOOKUP = {0: 0, 1: 1, 2: 2}
LANDSCAPE, PORTRAIT = (56, 40), (40, 56)  # (width, height)

#: file name, (width, height), Pillow mode, annotations as (category, [x, y, w, h], iscrowd).
IMAGES = [
    # A polygon square and a disc box running over the right border (clipped, kept).
    ("rgb.jpg", LANDSCAPE, "RGB", [(1, [6, 6, 20, 16], 0), (2, [40, 20, 30, 30], 0)]),
    ("gray.png", PORTRAIT, "L", [(2, [5, 10, 20, 25], 0)]),
    ("rgba.png", LANDSCAPE, "RGBA", [(1, [10, 5, 30, 25], 0), (2, [0, 0, 10, 10], 1)]),
    ("deep.png", LANDSCAPE, "I;16", [(1, [20, 10, 25, 20], 0)]),
    ("palette.png", PORTRAIT, "P", [(2, [8, 8, 24, 30], 0)]),
    ("unannotated.jpg", LANDSCAPE, "L", []),
    ("crowd_only.png", LANDSCAPE, "RGB", [(1, [0, 0, 56, 40], 1)]),
    ("subpixel.png", LANDSCAPE, "RGB", [(1, [10, 10, 0.4, 5], 0), (2, [20, 20, 5, 0.9], 0)]),
    ("negative.png", PORTRAIT, "RGB", [(1, [30, 10, -8, 10], 0), (2, [5, 5, 10, 0], 0)]),
    ("outside.png", LANDSCAPE, "RGB", [(1, [60, 5, 10, 10], 0), (2, [-20, 5, 10, 10], 0)]),
]
USABLE = ["rgb.jpg", "gray.png", "rgba.png", "deep.png", "palette.png"]
DEGENERATE_COUNTS = {"outside the image": 2, "under 1 px once clipped to the image": 2, "with non-positive width or height": 2}


def _pixels(mode: str, size, rng) -> np.ndarray:
    width, height = size
    if mode == "I;16":
        return rng.integers(0, 65536, (height, width), dtype=np.uint16)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    return rng.integers(0, 256, (height, width) if channels is None else (height, width, channels), dtype=np.uint8)


@pytest.fixture(scope="module")
def edge_data(tmp_path_factory):
    """The edge-case dataset: ``(image_root, ann_file, semantic_dir, pixels by file name)``."""
    root = tmp_path_factory.mktemp("edge_cases")
    (root / "images").mkdir()
    (root / "semantic").mkdir()
    rng = np.random.default_rng(13)
    images, annotations, pixels = [], [], {}
    for image_id, (name, size, mode, objects) in enumerate(IMAGES, start=1):
        width, height = size
        array = _pixels(mode, size, rng)
        pixels[name] = array
        pil = Image.fromarray(array).convert("P") if mode == "P" else Image.fromarray(array)
        if mode == "P":
            pixels[name] = np.array(pil.convert("RGB"))
        pil.save(root / "images" / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        semantic = np.zeros((height, width), np.uint8)
        for category, (x, y, w, h), iscrowd in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "bbox": [x, y, w, h], "iscrowd": iscrowd, "area": abs(w * h),
                                "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
            if name in USABLE or iscrowd:  # the label maps hold only real objects
                region = semantic[max(0, round(y)) : max(0, round(y + h)), max(0, round(x)) : max(0, round(x + w))]
                region[...] = 255 if iscrowd else category
        Image.fromarray(semantic).save(root / "semantic" / (name.rsplit(".", 1)[0] + ".png"))
    for ann_file, segmented in (("instances.json", True), ("instances_boxes.json", False)):
        kept = annotations if segmented else [{k: v for k, v in a.items() if k != "segmentation"} for a in annotations]
        (root / ann_file).write_text(json.dumps({"images": images, "annotations": kept, "categories": CATEGORIES}))
    return str(root / "images"), str(root / "instances.json"), str(root / "semantic"), pixels


def dataset(edge_data, semantic="masks", boxes_only=False, **options):
    """The edge-case dataset; ``boxes_only``: its annotation file without any segmentation."""
    image_root, ann_file, semantic_dir, _ = edge_data
    if boxes_only:
        ann_file = ann_file.replace("instances.json", "instances_boxes.json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateBoxWarning)
        return CocoDetection(image_root, ann_file, semantic=semantic, semantic_dir=semantic_dir,
                             semantic_lookup=SEMANTIC_LOOKUP, **options)


def index_of(data, name: str) -> int:
    return next(i for i, image_id in enumerate(data.image_ids) if data.coco.imgs[image_id]["file_name"] == name)


# -- data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("semantic", ["masks", "boxes", "png", "none"])
def test_images_without_objects_load(edge_data, semantic):
    """Images without usable objects give empty targets, (0, H, W) masks through the resize,
    and a semantic map of background (or ignore, for a crowd-only image), for every label source."""
    data = dataset(edge_data, semantic, return_masks=True, transforms=build_transforms(64, 96))
    for name in ("unannotated.jpg", "subpixel.png", "negative.png", "outside.png", "crowd_only.png"):
        image, target = data[index_of(data, name)]
        height, width = image.shape[-2:]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        assert target["masks"].shape == (0, height, width)
        if semantic != "none":
            expected = 255 if name == "crowd_only.png" else 0
            assert target["semantic"].shape == (height, width)
            assert (target["semantic"] == expected).all()
    for i in range(len(data)):  # and every other image
        data[i]


def test_degenerate_boxes_are_dropped_with_one_counted_warning(edge_data):
    """Degenerate boxes are dropped with one warning that counts them by reason, and an image
    left without boxes leaves the training set; a box over the border is clipped and kept."""
    image_root, ann_file, _, _ = edge_data
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_set = CocoDetection(image_root, ann_file, semantic="none", remove_empty=True)
    degenerate = [w for w in caught if issubclass(w.category, DegenerateBoxWarning)]
    assert len(degenerate) == 1
    message = str(degenerate[0].message)
    assert f"dropped {sum(DEGENERATE_COUNTS.values())} annotations with degenerate boxes" in message
    for reason, count in DEGENERATE_COUNTS.items():
        assert re.search(rf"\b{count} {reason}", message), (reason, message)
    assert sorted(train_set.coco.imgs[i]["file_name"] for i in train_set.image_ids) == sorted(USABLE)
    # The box over the border is kept, clipped to the image.
    _, target = train_set[index_of(train_set, "rgb.jpg")]
    assert torch.equal(target["boxes"], torch.tensor([[6.0, 6, 26, 22], [40, 20, 56, 40]]))


def test_image_modes_become_rgb_in_unit_range(edge_data):
    """Grayscale, RGBA, palette and 16-bit PNGs load as RGB in [0, 1] (16-bit scaled by 65535,
    not saturated at 255)."""
    pixels = edge_data[3]
    data = dataset(edge_data, "none")
    expected = {
        "gray.png": torch.from_numpy(pixels["gray.png"]).float().div(255).expand(3, -1, -1),
        "rgba.png": torch.from_numpy(pixels["rgba.png"][..., :3]).permute(2, 0, 1).float().div(255),
        "deep.png": torch.from_numpy(pixels["deep.png"].astype(np.float32)).div(65535).expand(3, -1, -1),
        "palette.png": torch.from_numpy(pixels["palette.png"]).permute(2, 0, 1).float().div(255),
    }
    for name, want in expected.items():
        image, _ = data[index_of(data, name)]
        torch.testing.assert_close(image, want, rtol=0, atol=1e-6, msg=name)
    for name in ("rgb.jpg", "unannotated.jpg"):  # lossy: shape and range only
        image, _ = data[index_of(data, name)]
        assert image.shape == (3, 40, 56) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1


# -- models -----------------------------------------------------------------------------------

FAMILIES = ["faster_rcnn_r18_sfpn_small", "mask_rcnn_r18_sfpn_small", "cascade_rcnn_r18_sfpn_small"]


@pytest.mark.parametrize("preset", FAMILIES)
def test_batch_without_foreground_trains(edge_data, preset):
    """A batch without a foreground box trains: background-only classification, zero
    regression/mask losses that stay in the graph, a gradient for every parameter."""
    data = dataset(edge_data, "masks", return_masks=True, transforms=build_transforms(64, 96))
    batch = [data[index_of(data, name)] for name in ("unannotated.jpg", "crowd_only.png")]
    torch.manual_seed(0)
    model = sfpn.build_detector(preset, num_classes=2).train()
    losses = model([image for image, _ in batch], [target for _, target in batch])
    for name, value in losses.items():
        assert math.isfinite(value.item()), name
        if "box_reg" in name or "rpn_loc" in name or name == "loss_mask":
            assert value.item() == 0, name  # no foreground box
    # Background classification, and the semantic loss on the unannotated image's background
    # (the crowd-only image's pixels are all ignored).
    assert all(v > 0 for k, v in losses.items() if k.startswith(("loss_cls", "loss_rpn_cls", "loss_segm")))
    sum(losses.values()).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} left out of the graph"
        assert torch.isfinite(parameter.grad).all(), name
    # A batch whose every pixel is ignored: the semantic loss is 0, not the NaN of 0 / 0.
    image, target = batch[1]
    assert model([image], [target])["loss_segm"].item() == 0


@pytest.mark.parametrize("preset", FAMILIES)
def test_zero_proposals_give_empty_detections(preset, monkeypatch):
    """An image without proposals (e.g. Cascade R-CNN on random images, or diverged weights)
    gets empty detections, and the semantic map still."""
    torch.manual_seed(0)
    model = sfpn.build_detector(preset, num_classes=2).eval()
    rpn_forward = model.rpn.forward

    def no_proposals(*args, **kwargs):
        proposals, losses = rpn_forward(*args, **kwargs)
        return [p[:0] for p in proposals], losses

    monkeypatch.setattr(model.rpn, "forward", no_proposals)
    sizes = [(64, 96), (64, 80)]
    with torch.no_grad():
        detections = model([torch.rand(3, *size) for size in sizes])
    assert len(detections) == 2
    for detection, (height, width) in zip(detections, sizes):
        assert detection["boxes"].shape == (0, 4)
        assert detection["scores"].shape == (0,) and detection["labels"].shape == (0,)
        if preset.startswith("mask_rcnn"):
            assert detection["masks"].shape == (0, height, width)
        assert detection["semantic"].shape == (height, width)  # the SFPN branch still runs


# -- end to end -------------------------------------------------------------------------------

#: Each preset family, FPN and SFPN; the SFPN ones between them use every semantic label source,
#: boxes on a dataset without any segmentation (where masks cannot be scored).
END_TO_END = [
    ("faster_rcnn_r18_fpn_small", "none"),
    ("faster_rcnn_r18_sfpn_small", "boxes"),
    ("mask_rcnn_r18_fpn_small", "none"),
    ("mask_rcnn_r18_sfpn_small", "masks"),
    ("cascade_rcnn_r18_fpn_small", "none"),
    ("cascade_rcnn_r18_sfpn_small", "png"),
]


@pytest.mark.parametrize("preset, semantic", END_TO_END)
def test_every_family_trains_and_evaluates_on_edge_cases(edge_data, tmp_path, preset, semantic):
    """Training keeps the images without objects (remove_empty=False), so background-only
    images and batches go through the whole loop; evaluation covers every image, and a box-only
    dataset is scored without masks (COCOeval finds no 'segmentation' to score them on)."""
    boxes_only = semantic == "boxes"
    config = training_config(preset)
    config.solver.max_iters, config.solver.batch_size, config.solver.warmup_iters = 3, 2, 1
    config.data.min_size, config.data.max_size, config.data.test_min_size = (64,), 96, 64
    config.data.num_workers, config.log_every, config.eval_batch_size = 0, 1, 2
    return_masks = preset.startswith("mask_rcnn")
    train_set = dataset(edge_data, semantic, boxes_only, return_masks=return_masks,
                        transforms=build_transforms((56, 64), 96, flip_prob=0.5))
    val_set = dataset(edge_data, semantic, boxes_only, return_masks=return_masks, transforms=build_transforms(64, 96))
    seed_everything(0)
    model = sfpn.build_detector(preset, num_classes=train_set.num_classes)
    meta = {"preset": preset, "num_classes": 2, "classes": train_set.class_names,
            "label_to_category_id": train_set.label_to_category_id}
    metrics = Trainer(model, train_set, val_set, config, str(tmp_path), torch.device("cpu"), meta, progress=False).train()
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["iter"] for r in records if r["type"] == "train"] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in records if r["type"] == "train")
    assert set(metrics) == {"bbox", "segm", "semantic"}
    assert (metrics["semantic"] is None) == (semantic == "none")  # the SFPN presets are given labels
    assert (metrics["segm"] is None) == (boxes_only or (semantic == "none" and not return_masks))
    results = json.load(open(tmp_path / "results.json"))
    image_ids = set(val_set.image_ids)
    assert all(r["image_id"] in image_ids and len(r["bbox"]) == 4 for r in results)
    # Masks are made only where they are scored: none for a box-only dataset.
    assert all(("segmentation" in r) == (metrics["segm"] is not None) for r in results)
