"""COCO panoptic ground truth: the ``panoptic_*.json`` file and its PNG segment maps.

A COCO panoptic annotation file holds ``categories`` (``id``, ``name``, ``isthing``),
``annotations`` (one per image: ``image_id``, ``file_name`` of its PNG, ``segments_info``: the
segments' ``id``, ``category_id``, ``iscrowd``, ``area``, ``bbox``) and usually ``images``. Each
PNG is RGB and stores segment id ``R + 256 G + 256^2 B`` per pixel; 0 is void (unlabelled). The
PNGs lie in a folder named like the JSON file without ``.json`` (``panoptic_val2017.json`` ->
``panoptic_val2017/``), COCO's convention. The PNG codec (``read_segment_ids``,
``write_segment_ids``) lives in :mod:`sfpn.semantic_labels`, beside the other label-map readers.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..semantic_labels import read_segment_ids, write_segment_ids  # noqa: F401  (the PNG codec, re-exported)
from .coco import AnnotationError, read_annotation_json

def load_panoptic_annotations(json_file: str) -> dict:
    """Reads and validates a COCO panoptic annotation file; returns its JSON content, with
    ``iscrowd`` 0 filled in where a segment lacks it.

    Raises ``FileNotFoundError`` for a missing file and :class:`~sfpn.data.coco.AnnotationError`
    (naming the file and the entry) for invalid JSON, a missing or mistyped field, duplicate category, image or segment
    ids, a segment of an unknown category, or an annotation of an image ``images`` lacks.
    """
    data = read_annotation_json(json_file, "COCO panoptic annotation file")

    def fail(message):
        raise AnnotationError(f"{json_file}: {message}")

    def check_fields(where, entry, fields):
        if not isinstance(entry, dict):
            fail(f"{where} must be an object, got {type(entry).__name__}")
        for field, types in fields.items():
            if field not in entry:
                fail(f"{where} lacks the '{field}' field")
            allowed = types if isinstance(types, tuple) else (types,)
            if not isinstance(entry[field], allowed) or (isinstance(entry[field], bool) and bool not in allowed):
                fail(f"{where}: '{field}' has the wrong type {type(entry[field]).__name__}")

    if not isinstance(data, dict):
        fail(f"expected a JSON object with 'annotations' and 'categories', got {type(data).__name__}")
    for key in ("annotations", "categories"):
        if not isinstance(data.get(key), list):
            fail(f"'{key}' must be a list")
    if not data["categories"]:
        fail("the 'categories' list is empty")
    category_ids = set()
    for index, category in enumerate(data["categories"]):
        check_fields(f"categories[{index}]", category, {"id": int, "name": str, "isthing": (int, bool)})
        if category["id"] in category_ids:
            fail(f"duplicate category id {category['id']}")
        category_ids.add(category["id"])
    image_ids = None
    if "images" in data:
        image_ids = set()
        for index, image in enumerate(data["images"]):
            check_fields(f"images[{index}]", image, {"id": int})
            image_ids.add(image["id"])
    annotated = set()
    for index, annotation in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        check_fields(where, annotation, {"image_id": int, "file_name": str, "segments_info": list})
        if annotation["image_id"] in annotated:
            fail(f"{where}: a second annotation of image_id {annotation['image_id']}")
        annotated.add(annotation["image_id"])
        if image_ids is not None and annotation["image_id"] not in image_ids:
            fail(f"{where} refers to image_id {annotation['image_id']}, which is not in 'images'")
        segment_ids = set()
        for position, segment in enumerate(annotation["segments_info"]):
            check_fields(f"{where}.segments_info[{position}]", segment, {"id": int, "category_id": int})
            if segment["id"] <= 0 or segment["id"] >= 256**3:
                fail(f"{where}.segments_info[{position}]: segment id {segment['id']} is not in [1, 256^3)")
            if segment["id"] in segment_ids:
                fail(f"{where}: duplicate segment id {segment['id']}")
            segment_ids.add(segment["id"])
            if segment["category_id"] not in category_ids:
                fail(f"{where}.segments_info[{position}] (id {segment['id']}) has category_id {segment['category_id']}, "
                     f"which is not in 'categories'")
            segment.setdefault("iscrowd", 0)
    return data


def read_panoptic_ground_truth(annotation: Mapping, categories: list[Mapping], png_root: str) -> tuple[torch.Tensor, list[dict]]:
    """One image's panoptic ground truth.

    Args:
        annotation: an entry of the file's ``annotations`` (as :func:`load_panoptic_annotations`
            returns it).
        categories: the file's ``categories``.
        png_root: the folder of the PNGs.

    Returns:
        ``(segment_ids, segments)``: ``segment_ids (H, W)`` int64, 0 = void; ``segments`` the
        annotation's segments as dicts ``{id, category_id, iscrowd, isthing, area}``, ``area``
        the segment's pixel count in the PNG.

    Raises ``ValueError`` when the PNG holds a segment id ``segments_info`` does not list, or
    ``segments_info`` lists one the PNG does not hold.
    """
    path = os.path.join(png_root, annotation["file_name"])
    segment_ids = read_segment_ids(path)
    values, counts = torch.unique(segment_ids, return_counts=True)
    areas = {int(v): int(c) for v, c in zip(values, counts) if v != 0}
    listed = {segment["id"] for segment in annotation["segments_info"]}
    if set(areas) - listed:
        raise ValueError(f"{path}: holds segment ids {sorted(set(areas) - listed)} that its segments_info does not list")
    if listed - set(areas):
        raise ValueError(f"{path}: its segments_info lists segment ids {sorted(listed - set(areas))} that the PNG does not hold")
    isthing = {category["id"]: bool(category["isthing"]) for category in categories}
    segments = [
        {"id": s["id"], "category_id": s["category_id"], "iscrowd": int(s.get("iscrowd", 0)),
         "isthing": isthing[s["category_id"]], "area": areas[s["id"]]}
        for s in annotation["segments_info"]
    ]
    return segment_ids, segments
