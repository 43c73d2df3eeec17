"""Panoptic segmentation: the COCO panoptic ground-truth loader."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sfpn.data.coco import AnnotationError
from sfpn.data.panoptic import (
    load_panoptic_annotations,
    read_panoptic_ground_truth,
    read_segment_ids,
    rgb_to_segment_ids,
    segment_ids_to_rgb,
    write_segment_ids,
)

pytestmark = pytest.mark.usefixtures("single_thread")

# -- the COCO panoptic ground-truth loader --------------------------------------------------------

def test_segment_ids_round_trip_through_a_png(tmp_path, generator):
    ids = torch.randint(0, 256**3, (7, 9), generator=generator)
    write_segment_ids(str(tmp_path / "ids.png"), ids)
    assert torch.equal(read_segment_ids(str(tmp_path / "ids.png")), ids)
    assert np.array_equal(rgb_to_segment_ids(segment_ids_to_rgb(ids.numpy())), ids.numpy())


def test_segment_ids_are_r_plus_256_g_plus_65536_b(tmp_path):
    rgb = np.array([[[1, 2, 3], [0, 0, 0]], [[255, 0, 0], [0, 0, 1]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert read_segment_ids(str(tmp_path / "a.png")).tolist() == [[1 + 2 * 256 + 3 * 65536, 0], [255, 65536]]
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    with pytest.raises(ValueError, match="mode 'L'"):
        read_segment_ids(str(tmp_path / "gray.png"))
    with pytest.raises(ValueError, match="segment_ids must lie in"):
        segment_ids_to_rgb(np.array([[256**3]]))


def write_panoptic(tmp_path, segments_info):
    ids = np.zeros((4, 6), dtype=np.int64)
    ids[:, :3], ids[:2, 3:], ids[3, 5] = 1 + 256 * 300, 7, 9  # 12 px stuff, 6 px thing, 1 px crowd
    (tmp_path / "panoptic_val").mkdir(exist_ok=True)
    write_segment_ids(str(tmp_path / "panoptic_val" / "a.png"), ids)
    data = {
        "images": [{"id": 4, "file_name": "a.jpg", "width": 6, "height": 4}],
        "annotations": [{"image_id": 4, "file_name": "a.png", "segments_info": segments_info}],
        "categories": [{"id": 1, "name": "cat", "isthing": 1}, {"id": 90, "name": "sky", "isthing": 0}],
    }
    (tmp_path / "panoptic_val.json").write_text(json.dumps(data))
    return ids, str(tmp_path / "panoptic_val.json"), str(tmp_path / "panoptic_val")


def test_the_ground_truth_loader_reads_json_and_png(tmp_path):
    info = [{"id": 1 + 256 * 300, "category_id": 90, "area": 12}, {"id": 7, "category_id": 1}, {"id": 9, "category_id": 1, "iscrowd": 1}]
    ids, json_file, png_root = write_panoptic(tmp_path, info)
    data = load_panoptic_annotations(json_file)
    segment_ids, segs = read_panoptic_ground_truth(data["annotations"][0], data["categories"], png_root)
    assert torch.equal(segment_ids, torch.from_numpy(ids))
    assert segs == [{"id": 1 + 256 * 300, "category_id": 90, "iscrowd": 0, "isthing": False, "area": 12},
                    {"id": 7, "category_id": 1, "iscrowd": 0, "isthing": True, "area": 6},
                    {"id": 9, "category_id": 1, "iscrowd": 1, "isthing": True, "area": 1}]


@pytest.mark.parametrize(
    "info,message",
    [
        ([{"id": 7, "category_id": 1}, {"id": 9, "category_id": 1}], r"holds segment ids \[76801\]"),
        ([{"id": 76801, "category_id": 90}, {"id": 7, "category_id": 1}, {"id": 9, "category_id": 1}, {"id": 10, "category_id": 1}],
         r"lists segment ids \[10\]"),
    ],
)
def test_the_loader_rejects_a_png_and_json_that_disagree(tmp_path, info, message):
    _, json_file, png_root = write_panoptic(tmp_path, info)
    data = load_panoptic_annotations(json_file)
    with pytest.raises(ValueError, match=message):
        read_panoptic_ground_truth(data["annotations"][0], data["categories"], png_root)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d["annotations"][0]["segments_info"].append({"id": 7, "category_id": 1}), "duplicate segment id 7"),
        (lambda d: d["annotations"][0]["segments_info"].append({"id": 8, "category_id": 5}), "category_id 5, which is not in"),
        (lambda d: d["annotations"][0].update(image_id=5), "image_id 5, which is not in 'images'"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), "a second annotation of image_id 4"),
        (lambda d: d["categories"][0].pop("isthing"), r"categories\[0\] lacks the 'isthing' field"),
        (lambda d: d["annotations"][0]["segments_info"].append({"id": 0, "category_id": 1}), "segment id 0 is not in"),
        (lambda d: d["annotations"][0].update(segments_info={}), "'segments_info' has the wrong type"),
    ],
)
def test_the_loader_rejects_bad_annotation_files(tmp_path, change, message):
    _, json_file, _ = write_panoptic(tmp_path, [{"id": 7, "category_id": 1}])
    with open(json_file) as f:
        data = json.load(f)
    change(data)
    with open(json_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(AnnotationError, match=message) as info:
        load_panoptic_annotations(json_file)
    assert json_file in str(info.value)


def test_a_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="COCO panoptic annotation file not found"):
        load_panoptic_annotations(str(tmp_path / "absent.json"))
