"""The synthetic datasets (sfpn/data/synthetic.py): deterministic and valid COCO; thing and
stuff categories, label maps that agree with the instance masks, panoptic segments."""
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from sfpn.data import CocoDetection, ShapesSpec, synthetic_dataset
from sfpn.data.synthetic import DATASETS, label_maps_dir
from sfpn.semantic_labels import read_panoptic_png


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
