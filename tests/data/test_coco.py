"""CocoDetection on a small hand-made COCO dataset: targets, semantic maps from masks, boxes
and label PNGs (COCO-stuff's folder layout too), stuff categories kept out of the detection
targets, empty images; bad files and annotations (isthing too) named in one error."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sfpn.data import AnnotationError, CocoDetection


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


# ------------------------------------------------------------------------------------------------
# The dataset


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


# ------------------------------------------------------------------------------------------------
# Bad input


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


@pytest.mark.parametrize("isthing", [2, True, "1"])
def test_bad_isthing_is_refused(tmp_path, isthing):
    image_root, ann_file = write_coco(tmp_path, categories=CATEGORIES + [{"id": 40, "name": "grass", "isthing": isthing}])
    with pytest.raises(AnnotationError, match="isthing"):
        CocoDetection(image_root, ann_file)
