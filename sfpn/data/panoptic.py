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

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class PanopticLabelSpace:
    """How a detector's labels and semantic classes name a panoptic dataset's categories.

    ``label_to_semantic``: detector label -> the semantic class of that thing class;
    ``stuff_classes``: the semantic classes that are stuff; ``semantic_to_category_id``: semantic
    class -> panoptic category id (index 0, background, maps to 0: void). The first two are
    :func:`~sfpn.modeling.panoptic.panoptic_merge`'s arguments.
    """

    label_to_semantic: dict[int, int]
    stuff_classes: tuple[int, ...]
    semantic_to_category_id: tuple[int, ...]


def panoptic_label_space(label_to_category_id: list[int], semantic_category_ids: list[int],
                         categories: list[Mapping]) -> PanopticLabelSpace:
    """The label space of a detector on a panoptic dataset, from the dataset's categories.

    Args:
        label_to_category_id: detector label -> category id (index 0 background), as
            :class:`~sfpn.data.coco.CocoDetection` has it.
        semantic_category_ids: semantic class -> category id (index 0 background). The SFPN
            branch's classes are background and the detector's labels (``label_to_category_id``
            itself); a branch trained on stuff too lists the stuff categories after them.
        categories: the panoptic file's ``categories`` (``id``, ``isthing``).

    Raises ``ValueError`` when a detector label's category is not a thing category of
    ``categories``, or a semantic class's category is not in ``categories`` at all.
    """
    isthing = {category["id"]: bool(category["isthing"]) for category in categories}
    unknown = [c for c in semantic_category_ids[1:] if c not in isthing]
    if unknown:
        raise ValueError(f"semantic_category_ids: the categories {unknown} are not in the panoptic categories {sorted(isthing)}")
    semantic_of_category = {c: k for k, c in enumerate(semantic_category_ids) if k > 0}
    not_things = [c for c in label_to_category_id[1:] if not isthing.get(c, False) or c not in semantic_of_category]
    if not_things:
        raise ValueError(f"label_to_category_id: the detector's categories {not_things} are not thing categories of "
                         f"both the panoptic categories and the semantic classes")
    return PanopticLabelSpace(
        label_to_semantic={label: semantic_of_category[c] for label, c in enumerate(label_to_category_id) if label > 0},
        stuff_classes=tuple(k for k, c in enumerate(semantic_category_ids) if k > 0 and not isthing[c]),
        semantic_to_category_id=(0, *semantic_category_ids[1:]),
    )


class PanopticGroundTruth:
    """A COCO panoptic annotation file and its PNG folder, read one image at a time.

    Args:
        json_file: the ``panoptic_*.json`` file.
        png_root: the folder of its PNGs; None takes COCO's convention (the JSON's path without
            ``.json``).
    """

    def __init__(self, json_file: str, png_root: str | None = None):
        self.data = load_panoptic_annotations(json_file)
        self.png_root = png_root or os.path.splitext(json_file)[0]
        if not os.path.isdir(self.png_root):
            raise FileNotFoundError(f"panoptic PNG folder not found: {self.png_root} (for {json_file})")
        self.json_file = json_file
        self.categories = self.data["categories"]
        self.annotations = {annotation["image_id"]: annotation for annotation in self.data["annotations"]}

    def read(self, image_id: int) -> tuple[torch.Tensor, list[dict]]:
        """The image's ``(segment_ids, segments)`` (:func:`read_panoptic_ground_truth`); a
        ``KeyError`` naming the file when it has no annotation of ``image_id``."""
        if image_id not in self.annotations:
            raise KeyError(f"{self.json_file} has no annotation of image_id {image_id}")
        return read_panoptic_ground_truth(self.annotations[image_id], self.categories, self.png_root)
