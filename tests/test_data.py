"""Datasets, semantic labels, transforms, samplers and the synthetic dataset, on hand-made data."""
import json
import os
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sfpn.data import (
    AnnotationError,
    CocoDetection,
    GroupedTrainBatchSampler,
    RandomHorizontalFlip,
    ResizeShortestEdge,
    ShapesSpec,
    build_transforms,
    synthetic_dataset,
)
from sfpn.data.synthetic import DATASETS, label_maps_dir
from sfpn.semantic_labels import read_label_png, read_panoptic_png, semantic_from_boxes, semantic_from_masks

# -- a small hand-made COCO dataset -----------------------------------------------------------

# Category ids deliberately sparse and unordered: labels must come out as 1..3 by id.
CATEGORIES = [{"id": 11, "name": "kite"}, {"id": 3, "name": "car"}, {"id": 7, "name": "dog"}]


def _rect_polygon(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def write_coco(folder, annotations=None, images=None, categories=CATEGORIES, write_images=True):
    """Two images (40x30 landscape and 20x32 portrait) and their annotations."""
    os.makedirs(folder / "images", exist_ok=True)
    if images is None:
        images = [
            {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.png", "width": 20, "height": 32},
        ]
    if annotations is None:
        rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((6, 4), np.uint8), ((20, 6), (10, 6)))))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations = [
            # A large car (polygon) with a small dog on top of it (compressed RLE) in image 1.
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [4, 4, 24, 20], "segmentation": _rect_polygon(4, 4, 28, 24), "iscrowd": 0, "area": 480},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [10, 8, 4, 4], "segmentation": mask_utils.encode(np.asfortranarray(np.pad(np.ones((4, 4), np.uint8), ((8, 18), (10, 26))))) | {}, "iscrowd": 0, "area": 16},
            # A crowd of kites (uncompressed RLE): ignore region, not a box.
            {"id": 3, "image_id": 1, "category_id": 11, "bbox": [30, 0, 10, 10], "segmentation": {"size": [30, 40], "counts": [900] + [10, 20] * 10}, "iscrowd": 1, "area": 100},
            # A kite in image 2, compressed RLE as a JSON string.
            {"id": 4, "image_id": 2, "category_id": 11, "bbox": [10, 20, 4, 6], "segmentation": rle, "iscrowd": 0, "area": 24},
        ]
        annotations[1]["segmentation"]["counts"] = annotations[1]["segmentation"]["counts"].decode("ascii")
    data = {"images": images, "annotations": annotations, "categories": categories}
    ann_file = folder / "instances.json"
    ann_file.write_text(json.dumps(data))
    if write_images:
        rng = np.random.default_rng(0)
        for image in images:
            pixels = rng.integers(0, 256, (image["height"], image["width"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "images" / image["file_name"])
    return str(folder / "images"), str(ann_file)


@pytest.fixture
def coco_files(tmp_path):
    return write_coco(tmp_path)


def test_dataset_targets(coco_files):
    dataset = CocoDetection(*coco_files, return_masks=True)
    assert dataset.num_classes == 3
    assert dataset.class_names == ["car", "dog", "kite"]
    assert dataset.label_to_category_id == [0, 3, 7, 11]
    assert dataset.aspect_ratio_groups() == [0, 1]

    image, target = dataset[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    expected = np.asarray(Image.open(os.path.join(coco_files[0], "a.png")), dtype=np.float32) / 255
    torch.testing.assert_close(image, torch.from_numpy(expected).permute(2, 0, 1))
    assert target["image_id"] == 1 and target["orig_size"] == (30, 40)
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 4, 28, 24], [10, 8, 14, 12]]))
    assert target["labels"].tolist() == [1, 2]  # car, dog; the crowd is no box
    torch.testing.assert_close(target["crowd_boxes"], torch.tensor([[30.0, 0, 40, 10]]))
    masks = target["masks"]
    assert masks.shape == (2, 30, 40) and masks.dtype == torch.uint8
    assert masks[0].sum() == 480 and masks[0, 4:24, 4:28].all()
    assert masks[1].sum() == 16 and masks[1, 8:12, 10:14].all()

    semantic = target["semantic"]
    expected = torch.zeros(30, 40, dtype=torch.int64)
    expected[4:24, 4:28] = 1
    expected[8:12, 10:14] = 2  # the small dog is painted over the car
    expected[0:10, 30:40] = 255  # crowd
    assert torch.equal(semantic, expected)

    _, target = dataset[1]
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 20, 14, 26]]))
    assert target["labels"].tolist() == [3]
    assert target["semantic"].sum() == 24 * 3


def test_dataset_semantic_from_boxes_and_none(coco_files):
    dataset = CocoDetection(*coco_files, semantic="boxes")
    _, target = dataset[0]
    assert "masks" not in target
    expected = torch.zeros(30, 40, dtype=torch.int64)
    expected[4:24, 4:28] = 1
    expected[8:12, 10:14] = 2
    expected[0:10, 30:40] = 255
    assert torch.equal(target["semantic"], expected)
    _, target = CocoDetection(*coco_files, semantic="none")[0]
    assert "semantic" not in target


def test_dataset_remove_empty_and_box_fallback(tmp_path):
    # An annotation without segmentation is painted as its box; image 2 has only a crowd.
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2.4, 3.6, 10, 5]},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1},
    ]
    files = write_coco(tmp_path, annotations=annotations)
    dataset = CocoDetection(*files, remove_empty=True)
    assert len(dataset) == 1
    _, target = dataset[0]
    assert target["semantic"].sum() == 10 * 5
    assert len(CocoDetection(*files)) == 2


# -- semantic rasterisation -------------------------------------------------------------------

def test_semantic_from_masks_paints_smaller_last_and_crowd_ignore():
    masks = torch.zeros(3, 6, 6, dtype=torch.uint8)
    masks[0, 1:3, 1:3] = 1  # small, first in the list
    masks[1, 0:5, 0:5] = 1  # large
    masks[2, 4:6, 4:6] = 1  # crowd, overlapping the large one at (4, 4)
    labels = torch.tensor([2, 1, 3])
    semantic = semantic_from_masks(masks, labels, torch.tensor([0, 0, 1]))
    expected = torch.zeros(6, 6, dtype=torch.int64)
    expected[0:5, 0:5] = 1
    expected[1:3, 1:3] = 2
    expected[4:6, 4:6] = 255
    assert torch.equal(semantic, expected)
    # Without iscrowd every instance gets its label; no masks gives background.
    assert semantic_from_masks(masks, labels)[5, 5] == 3
    assert torch.equal(semantic_from_masks(torch.zeros(0, 4, 5), torch.zeros(0, dtype=torch.int64)), torch.zeros(4, 5, dtype=torch.int64))


def test_semantic_from_masks_matches_a_pixel_loop(generator):
    masks = torch.rand(5, 9, 11, generator=generator) > 0.6
    labels = torch.randint(1, 4, (5,), generator=generator)
    semantic = semantic_from_masks(masks, labels)
    areas = masks.flatten(1).sum(1)
    for y in range(9):
        for x in range(11):
            covering = [k for k in range(5) if masks[k, y, x]]
            want = 0 if not covering else labels[min(covering, key=lambda k: (areas[k], -k))].item()
            assert semantic[y, x].item() == want


def test_semantic_from_boxes():
    boxes = torch.tensor([[0.0, 0.0, 6.0, 4.0], [2.4, 1.6, 4.4, 3.4], [7.2, 5.1, 7.4, 5.3]])
    labels = torch.tensor([1, 2, 3])
    semantic = semantic_from_boxes(boxes, labels, (6, 8))
    expected = torch.zeros(6, 8, dtype=torch.int64)
    expected[0:4, 0:6] = 1
    expected[2:3, 2:4] = 2  # pixel centres inside [2.4, 4.4] x [1.6, 3.4]
    expected[5, 7] = 3  # a box smaller than a pixel still covers one
    assert torch.equal(semantic, expected)
    crowd = semantic_from_boxes(boxes, labels, (6, 8), iscrowd=torch.tensor([True, False, False]))
    assert crowd[0, 0] == 255 and crowd[2, 2] == 2
    assert torch.equal(semantic_from_boxes(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), (3, 2)), torch.zeros(3, 2, dtype=torch.int64))


def test_semantic_bad_shapes():
    with pytest.raises(ValueError, match="masks"):
        semantic_from_masks(torch.zeros(4, 4), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        semantic_from_masks(torch.zeros(2, 4, 4), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="boxes"):
        semantic_from_boxes(torch.zeros(2, 5), torch.zeros(2, dtype=torch.int64), (4, 4))


def test_read_label_pngs(tmp_path):
    raw = np.array([[0, 1, 255], [5, 1, 0]], dtype=np.uint8)
    Image.fromarray(raw).save(tmp_path / "stuff.png")
    semantic = read_label_png(str(tmp_path / "stuff.png"), {0: 1, 1: 2, 5: 6})
    assert semantic.tolist() == [[1, 2, 255], [6, 2, 1]]
    ids = np.array([[0, 300, 300], [7, 7, 0]])  # 300 = (44, 1, 0) in RGB
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "panoptic.png")
    segments = [{"id": 300, "category_id": 3}, {"id": 7, "category_id": 11, "iscrowd": 1}]
    semantic = read_panoptic_png(str(tmp_path / "panoptic.png"), segments, {3: 1, 11: 2})
    assert semantic.tolist() == [[255, 1, 1], [255, 255, 255]]


# -- transforms -------------------------------------------------------------------------------

def _random_scene(generator, height=37, width=53, count=4):
    """An image whose colour encodes the label under each pixel, with masks, boxes, semantic."""
    masks = torch.zeros(count, height, width, dtype=torch.uint8)
    boxes = []
    for k in range(count):
        y0 = int(torch.randint(0, height - 12, (), generator=generator))
        x0 = int(torch.randint(0, width - 12, (), generator=generator))
        h, w = (int(v) for v in torch.randint(6, 12, (2,), generator=generator))
        masks[k, y0 : y0 + h, x0 : x0 + w] = 1
        boxes.append([x0, y0, x0 + w, y0 + h])
    labels = torch.arange(1, count + 1)
    semantic = semantic_from_masks(masks, labels)
    image = (semantic.float() / count)[None].expand(3, -1, -1).clone()
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": labels, "masks": masks, "semantic": semantic}
    return image, target


def test_flip_keeps_everything_aligned(generator):
    image, target = _random_scene(generator)
    flipped, out = RandomHorizontalFlip(1.0)(image, target, generator)
    assert torch.equal(flipped, image.flip(-1))
    assert torch.equal(out["semantic"], semantic_from_masks(out["masks"], out["labels"]))
    for box, mask in zip(out["boxes"], out["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    assert RandomHorizontalFlip(0.0)(image, target, generator)[0] is image


@pytest.mark.parametrize("min_size,max_size", [(74, 1000), (30, 1000), (50, 60)])
def test_resize_keeps_everything_aligned(generator, min_size, max_size):
    image, target = _random_scene(generator)
    resized, out = ResizeShortestEdge(min_size, max_size)(image, target, generator)
    height, width = resized.shape[-2:]
    assert min(height, width) == min_size or max(height, width) == max_size
    assert out["masks"].shape[-2:] == (height, width) and out["semantic"].shape == (height, width)
    # Masks and the semantic map go through the same nearest sampling, so they agree exactly.
    assert torch.equal(out["semantic"], semantic_from_masks(out["masks"], out["labels"]))
    for box, mask in zip(out["boxes"], out["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        tight = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert (box - tight).abs().max() <= 1 + 1e-4  # nearest sampling moves an edge by < 1 pixel
    # The image moved with them: away from region borders its colour still encodes the label.
    interior = torch.nn.functional.max_pool2d(out["semantic"][None, None].float(), 5, 1, 2)[0, 0] == -torch.nn.functional.max_pool2d(-out["semantic"][None, None].float(), 5, 1, 2)[0, 0]
    torch.testing.assert_close(resized[0][interior], out["semantic"][interior].float() / 4, atol=1e-4, rtol=0)


def test_build_transforms_are_seeded(generator):
    image, target = _random_scene(generator)
    transform = build_transforms((20, 30, 40), 1000, flip_prob=0.5)
    runs = [transform(image, target, torch.Generator().manual_seed(seed)) for seed in (1, 1, 2, 3, 4, 5, 6)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1]["boxes"], runs[1][1]["boxes"])
    assert len({tuple(r[0].shape) for r in runs}) > 1


# -- bad input --------------------------------------------------------------------------------

def test_missing_image_names_the_file(tmp_path):
    image_root, ann_file = write_coco(tmp_path)
    os.unlink(os.path.join(image_root, "b.png"))
    with pytest.raises(FileNotFoundError, match="b.png"):
        CocoDetection(image_root, ann_file)
    dataset = CocoDetection(image_root, ann_file, check_images=False)
    with pytest.raises(FileNotFoundError, match=r"b\.png.*image id 2"):
        dataset[1]


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not a valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"images": [], "categories": [{"id": 1, "name": "a"}]}', "missing the 'annotations' list"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
    ],
)
def test_corrupt_annotation_file(tmp_path, content, message):
    image_root, ann_file = write_coco(tmp_path)
    with open(ann_file, "w") as f:
        f.write(content)
    with pytest.raises(AnnotationError, match=message) as info:
        CocoDetection(image_root, ann_file)
    assert ann_file in str(info.value)


@pytest.mark.parametrize(
    "annotation,message",
    [
        ({"id": 1, "image_id": 1, "category_id": 5, "bbox": [0, 0, 2, 2]}, r"category_id 5, which is not in 'categories'"),
        ({"id": 1, "image_id": 9, "category_id": 3, "bbox": [0, 0, 2, 2]}, "image_id 9"),
        ({"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 2]}, "'bbox' must be 4 finite numbers"),
        ({"id": 1, "image_id": 1, "category_id": 3}, "lacks the 'bbox' field"),
        ({"id": 1, "image_id": "1", "category_id": 3, "bbox": [0, 0, 2, 2]}, "'image_id' has the wrong type"),
    ],
)
def test_schema_broken_annotation(tmp_path, annotation, message):
    image_root, ann_file = write_coco(tmp_path, annotations=[annotation])
    with pytest.raises(AnnotationError, match=message) as info:
        CocoDetection(image_root, ann_file)
    assert ann_file in str(info.value)


def test_empty_annotations_and_categories(tmp_path):
    image_root, ann_file = write_coco(tmp_path, annotations=[])
    with pytest.raises(AnnotationError, match="'annotations' list is empty"):
        CocoDetection(image_root, ann_file)
    image_root, ann_file = write_coco(tmp_path, annotations=[], categories=[])
    with pytest.raises(AnnotationError, match="'categories' list is empty"):
        CocoDetection(image_root, ann_file)
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        CocoDetection(image_root, str(tmp_path / "nowhere.json"))


def test_image_size_mismatch(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    image_root, ann_file = write_coco(tmp_path, images=images, annotations=[{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 2, 2]}])
    Image.fromarray(np.zeros((30, 41, 3), np.uint8)).save(os.path.join(image_root, "a.png"))
    with pytest.raises(ValueError, match=r"a\.png is 41x30 but .* says 40x30"):
        CocoDetection(image_root, ann_file)[0]


# -- sampler ----------------------------------------------------------------------------------

def test_grouped_sampler_groups_resumes_and_shards():
    groups = [0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 1]

    def take(count, **kwargs):
        stream = iter(GroupedTrainBatchSampler(groups, 3, seed=5, **kwargs))
        return [next(stream) for _ in range(count)]

    batches = take(12)
    for batch in batches:
        assert len(batch) == 3 and len({groups[i] for i, _ in batch}) == 1
    assert take(7, start_batch=5) == batches[5:12]
    # Each sample's augmentation seed differs between epochs.
    assert len({seed for batch in batches for _, seed in batch}) > len(groups)
    # Two ranks split an epoch: together they see every index once.
    seen = []
    for rank in (0, 1):
        stream = iter(GroupedTrainBatchSampler([0] * 12, 2, seed=1, rank=rank, world_size=2))
        seen += [i for _ in range(3) for i, _ in next(stream)]
    assert sorted(seen) == list(range(12))


# -- things and stuff from label PNGs --------------------------------------------------------

def test_dataset_semantic_from_label_pngs(coco_files, tmp_path):
    labels = tmp_path / "stuff"
    labels.mkdir()
    Image.fromarray(np.full((30, 40), 255, np.uint8)).save(labels / "a.png")
    # Raw values are category ids - 1 (COCO-stuff's stuffthingmaps): car (3), dog (7), kite (11),
    # an id the file does not list (1), COCO-stuff's grass (124) and wood (182).
    raw = np.array([2, 6, 10, 0, 123, 181, 255], np.uint8)
    Image.fromarray(np.resize(raw, (32, 20))).save(labels / "b.png")
    dataset = CocoDetection(*coco_files, semantic="png", semantic_dir=str(labels))
    assert dataset.num_stuff_classes == 0 and dataset.semantic_class_names == ["car", "dog", "kite"]
    assert (dataset[0][1]["semantic"] == 255).all()  # COCO-stuff's unlabelled stays ignored
    semantic = dataset[1][1]["semantic"]
    # The things' detection labels; categories the dataset does not know are ignored.
    assert torch.equal(semantic, torch.from_numpy(np.resize(np.array([1, 2, 3, 255, 255, 255, 255]), (32, 20))))

    with_stuff = CocoDetection(*coco_files, semantic="png", semantic_dir=str(labels), coco_stuff=True)
    assert with_stuff.num_classes == 3 and with_stuff.num_stuff_classes == 91
    names = with_stuff.semantic_class_names
    assert names[:3] == ["car", "dog", "kite"] and names[3] == "banner" and names[-1] == "wood"
    grass, wood = 1 + names.index("grass"), 1 + names.index("wood")
    expected = np.resize(np.array([1, 2, 3, 255, grass, wood, 255]), (32, 20))
    assert torch.equal(with_stuff[1][1]["semantic"], torch.from_numpy(expected))
    assert with_stuff.label_to_category_id == dataset.label_to_category_id  # the detector's classes stay things
    # Label maps of masks or boxes label things only.
    assert CocoDetection(*coco_files, semantic="masks", coco_stuff=True).semantic_class_names == ["car", "dog", "kite"]
    os.unlink(labels / "b.png")
    with pytest.raises(FileNotFoundError, match=r"b\.png"):
        dataset[1]


def test_label_pngs_of_each_split_in_a_folder_named_like_its_images(coco_files, tmp_path):
    """COCO-stuff's layout: stuffthingmaps_trainval2017/{train2017,val2017}/, one folder for both splits."""
    image_root, _ = coco_files
    split = tmp_path / "maps" / os.path.basename(image_root)
    split.mkdir(parents=True)
    for name, size in (("a.png", (30, 40)), ("b.png", (32, 20))):
        Image.fromarray(np.full(size, 6, np.uint8)).save(split / name)
    dataset = CocoDetection(*coco_files, semantic="png", semantic_dir=str(tmp_path / "maps"))
    assert dataset.semantic_dir == str(split) and (dataset[1][1]["semantic"] == 2).all()


def test_stuff_categories_are_no_detection_targets(tmp_path):
    categories = CATEGORIES + [{"id": 40, "name": "grass", "isthing": 0}, {"id": 30, "name": "sky", "isthing": 0}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [4, 4, 24, 20], "segmentation": _rect_polygon(4, 4, 28, 24), "iscrowd": 0, "area": 480},
        # COCO-stuff writes stuff regions as annotations too: they are not objects to detect.
        {"id": 2, "image_id": 1, "category_id": 40, "bbox": [0, 0, 40, 30], "segmentation": _rect_polygon(0, 0, 40, 30), "iscrowd": 0, "area": 1200},
        {"id": 3, "image_id": 2, "category_id": 30, "bbox": [0, 0, 20, 32], "segmentation": _rect_polygon(0, 0, 20, 32), "iscrowd": 0, "area": 640},
    ]
    image_root, ann_file = write_coco(tmp_path, annotations=annotations, categories=categories)
    maps = tmp_path / "maps"
    maps.mkdir()
    Image.fromarray(np.full((30, 40), 39, np.uint8)).save(maps / "a.png")
    Image.fromarray(np.full((32, 20), 29, np.uint8)).save(maps / "b.png")
    dataset = CocoDetection(image_root, ann_file, semantic="png", semantic_dir=str(maps), return_masks=True, remove_empty=True)
    assert dataset.class_names == ["car", "dog", "kite"] and dataset.label_to_category_id == [0, 3, 7, 11]
    assert dataset.semantic_class_names == ["car", "dog", "kite", "sky", "grass"]  # stuff after things, by id
    assert dataset.image_ids == [1]  # image 2 has stuff only: no object to train on
    _, target = dataset[0]
    assert target["labels"].tolist() == [1] and target["masks"].shape == (1, 30, 40)
    assert (target["semantic"] == 5).all()  # grass
    masks_only = CocoDetection(image_root, ann_file, semantic="masks")
    assert masks_only.num_stuff_classes == 0 and set(masks_only[0][1]["semantic"].unique().tolist()) == {0, 1}


@pytest.mark.parametrize("isthing", [2, True, "1"])
def test_bad_isthing_is_refused(tmp_path, isthing):
    image_root, ann_file = write_coco(tmp_path, categories=CATEGORIES + [{"id": 40, "name": "grass", "isthing": isthing}])
    with pytest.raises(AnnotationError, match="isthing"):
        CocoDetection(image_root, ann_file)


# -- synthetic dataset ------------------------------------------------------------------------

def test_synthetic_dataset_is_deterministic_and_valid(tmp_path):
    spec = ShapesSpec(seed=3, num_train=4, num_val=2)
    first = synthetic_dataset(spec, root=str(tmp_path / "a"), progress=False)
    second = synthetic_dataset(spec, root=str(tmp_path / "b"), progress=False)
    def files(root):  # every file written, by path below the root
        return {
            os.path.relpath(os.path.join(folder, name), root): pathlib.Path(folder, name).read_bytes()
            for folder, _, names in os.walk(root) for name in names
        }

    written = files(tmp_path / "a")
    assert written == files(tmp_path / "b")
    # Images, instances, label maps and panoptic ground truth of both splits.
    assert len(written) == 3 * (4 + 2) + 4
    # Reused from the cache, not regenerated.
    mtime = os.path.getmtime(first["train"].ann_file)
    assert synthetic_dataset(spec, root=str(tmp_path / "a"), progress=False) == first
    assert os.path.getmtime(first["train"].ann_file) == mtime
    dataset = CocoDetection(first["train"].image_root, first["train"].ann_file, return_masks=True)
    assert dataset.num_classes == 6 and len(dataset) == 4
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert len(target["boxes"]) >= 1
        annotations = dataset.coco.imgToAnns[dataset.image_ids[index]]
        assert target["masks"].flatten(1).sum(1).tolist() == [a["area"] for a in annotations]
        assert set(target["semantic"].unique().tolist()) <= set(range(7))


# -- things and stuff of the synthetic datasets ------------------------------------------------

@pytest.fixture(scope="module", params=sorted(DATASETS))
def generated(request, tmp_path_factory):
    """(spec, root, splits) of a few images of each synthetic dataset."""
    spec = DATASETS[request.param](seed=4, num_train=3, num_val=2)
    root = str(tmp_path_factory.mktemp(request.param))
    return spec, root, synthetic_dataset(spec, root=root, progress=False)


def test_generated_categories_mark_things_and_stuff(generated):
    spec, _, splits = generated
    things, stuff = len(spec.categories), len(spec.stuff_categories)
    assert things >= 1 and stuff >= 2
    for split in splits.values():
        for path in (split.ann_file, split.panoptic_file):
            with open(path) as f:
                data = json.load(f)
            assert [c["name"] for c in data["categories"]] == [*spec.categories, *spec.stuff_categories]
            assert [c["id"] for c in data["categories"]] == list(range(1, things + stuff + 1))
            assert [c["isthing"] for c in data["categories"]] == [1] * things + [0] * stuff
        with open(split.ann_file) as f:
            assert {a["category_id"] for a in json.load(f)["annotations"]} <= set(range(1, things + 1))


def test_generated_label_maps_agree_with_the_instance_masks(generated):
    spec, root, splits = generated
    things, stuff = len(spec.categories), len(spec.stuff_categories)
    stuff_seen = set()
    for split in splits.values():
        dataset = CocoDetection(split.image_root, split.ann_file, semantic="png", semantic_dir=label_maps_dir(spec, root), return_masks=True)
        assert dataset.semantic_class_names == [*spec.categories, *spec.stuff_categories]
        for index in range(len(dataset)):
            _, target = dataset[index]
            semantic, masks = target["semantic"], target["masks"].bool()
            assert masks.sum(0).max() <= 1  # visible parts: one object per pixel
            for mask, label in zip(masks, target["labels"]):
                assert (semantic[mask] == label).all()
            thing = masks.any(0)
            # Off the objects: stuff, or unlabelled where an object too small to annotate shows.
            rest = semantic[~thing]
            assert ((rest > things) & (rest <= things + stuff) | (rest == 255)).all()
            assert (rest == 255).float().mean() < 0.02
            image_stuff = set(rest[rest != 255].unique().tolist())
            assert image_stuff
            stuff_seen |= image_stuff
    assert len(stuff_seen) >= 2  # several stuff classes


def test_generated_panoptic_segments(generated):
    _, _, splits = generated
    for split in splits.values():
        with open(split.panoptic_file) as f:
            panoptic = json.load(f)
        with open(split.ann_file) as f:
            instances = json.load(f)
        categories = {c["id"]: c for c in panoptic["categories"]}
        assert [i["id"] for i in panoptic["images"]] == [i["id"] for i in instances["images"]]
        for annotation in panoptic["annotations"]:
            rgb = np.asarray(Image.open(os.path.join(split.panoptic_dir, annotation["file_name"])).convert("RGB"), dtype=np.int64)
            segment_ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
            segments = annotation["segments_info"]
            ids = [s["id"] for s in segments]
            assert len(set(ids)) == len(ids) and 0 not in ids
            assert set(np.unique(segment_ids).tolist()) - {0} == set(ids)
            for segment in segments:
                ys, xs = np.nonzero(segment_ids == segment["id"])
                assert segment["area"] == len(ys)
                assert segment["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert segment["iscrowd"] == 0 and segment["category_id"] in categories
            # One segment per thing annotation, one per stuff category present.
            things = sorted((s["category_id"], s["area"]) for s in segments if categories[s["category_id"]]["isthing"])
            annotated = sorted((a["category_id"], a["area"]) for a in instances["annotations"] if a["image_id"] == annotation["image_id"])
            assert things == annotated
            stuff = [s["category_id"] for s in segments if not categories[s["category_id"]]["isthing"]]
            assert len(stuff) == len(set(stuff)) >= 1
            # The panoptic map and the label map tell the same story.
            labels = np.asarray(Image.open(os.path.join(split.semantic_dir, annotation["file_name"])), dtype=np.int64)
            from_segments = read_panoptic_png(os.path.join(split.panoptic_dir, annotation["file_name"]), segments, {c: c - 1 for c in categories})
            assert np.array_equal(from_segments.numpy(), labels)
