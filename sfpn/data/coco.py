"""COCO-format detection datasets through pycocotools.

``CocoDetection(image_root, ann_file)`` reads any COCO-format annotation file: boxes, instance
masks from polygons or RLE (compressed or not), crowd regions, and the semantic map SFPN trains
on. Category ids are mapped to contiguous labels 1..num_classes (0 is background) and the mapping
is kept (``label_to_category_id``) so that predictions can be written back as COCO results.

Things and stuff, as COCO-stuff and COCO panoptic have them: a category whose ``isthing`` is 0
is stuff, the rest (and every category of a file without ``isthing``, such as COCO's
``instances_*.json``) are things. The detector detects things only: labels 1..num_classes are
the thing categories, and annotations of stuff categories are not detection targets. Semantic
maps read from label PNGs label things and stuff: things keep their detection labels, the
stuff categories follow as num_classes + 1 .. num_classes + num_stuff_classes
(``semantic_class_names``); maps made from masks or boxes label things only.

Crowd annotations are not detection targets: they are dropped from ``boxes``/``labels`` and kept
as ``crowd_boxes`` and as ignore (255) regions of the semantic map.

Degenerate boxes (non-positive width or height, outside the image, or thinner than a pixel once
clipped to it) cannot be regressed to and are not objects: they are dropped when the dataset is
built, with one ``DegenerateBoxWarning`` that counts them per reason. Their images stay, as
background-only images where nothing else is annotated (``remove_empty`` drops those).

Images may be 8-bit RGB, RGBA (alpha dropped), grayscale, palette or 16-bit grayscale (scaled by
its full range), in any format Pillow reads.

The annotation file is validated when the dataset is built, so a broken file fails at once with
an error naming the file and the offending entry, not hours into training.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable
from numbers import Real

import numpy as np
import torch
from PIL import Image

from ..semantic_labels import SEMANTIC_SOURCES, read_label_png, semantic_from_boxes, semantic_from_masks
from .coco_stuff import COCO_STUFF_CATEGORIES


class AnnotationError(ValueError):
    """A COCO annotation file that cannot be used; the message names the file and the problem."""


class DegenerateBoxWarning(UserWarning):
    """Annotations whose boxes are not usable objects were dropped (counted per reason)."""


def degenerate_box_reason(bbox: list[float], width: int, height: int) -> str | None:
    """Why a COCO ``[x, y, w, h]`` box in a ``width`` x ``height`` image is not a usable object
    (the reason as the warning words it), or None for a usable box."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "with non-positive width or height"
    clipped_width = min(x + w, width) - max(x, 0)
    clipped_height = min(y + h, height) - max(y, 0)
    if clipped_width <= 0 or clipped_height <= 0:
        return "outside the image"
    if clipped_width < 1 or clipped_height < 1:
        return "under 1 px once clipped to the image"
    return None


def read_annotation_json(path: str, kind: str):
    """The JSON content of an annotation file; ``FileNotFoundError`` names the missing ``kind``
    of file, ``AnnotationError`` a file that is not JSON."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} not found: {path}")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"{path}: not a valid JSON file ({error})") from None


def load_coco_annotations(ann_file: str, require_annotations: bool = True) -> dict:
    """Reads and validates a COCO annotation file; returns its JSON content.

    Raises ``FileNotFoundError`` for a missing file and ``AnnotationError`` for invalid JSON, a
    missing or mistyped field, duplicate ids, an annotation whose ``image_id`` or ``category_id``
    is unknown, or (with ``require_annotations``) an empty annotation list.
    """
    data = read_annotation_json(ann_file, "COCO annotation file")

    def fail(message):
        raise AnnotationError(f"{ann_file}: {message}")

    if not isinstance(data, dict):
        fail(f"expected a JSON object with 'images', 'annotations' and 'categories', got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            fail(f"missing the '{key}' list")
        if not isinstance(data[key], list):
            fail(f"'{key}' must be a list, got {type(data[key]).__name__}")
    if not data["categories"]:
        fail("the 'categories' list is empty")
    if require_annotations and not data["annotations"]:
        fail("the 'annotations' list is empty: there is nothing to train or evaluate on")

    def check_fields(kind, index, entry, fields):
        if not isinstance(entry, dict):
            fail(f"{kind}[{index}] must be an object, got {type(entry).__name__}")
        for field, types in fields.items():
            if field not in entry:
                fail(f"{kind}[{index}] (id {entry.get('id')}) lacks the '{field}' field")
            if not isinstance(entry[field], types) or isinstance(entry[field], bool):
                fail(f"{kind}[{index}] (id {entry.get('id')}): '{field}' has the wrong type {type(entry[field]).__name__}")

    category_ids = set()
    for index, category in enumerate(data["categories"]):
        check_fields("categories", index, category, {"id": int, "name": str})
        if category.get("isthing", 1) not in (0, 1) or isinstance(category.get("isthing"), bool):
            fail(f"categories[{index}] (id {category['id']}): 'isthing' must be 0 or 1, got {category['isthing']!r}")
        if category["id"] in category_ids:
            fail(f"duplicate category id {category['id']}")
        category_ids.add(category["id"])
    image_ids = set()
    for index, image in enumerate(data["images"]):
        check_fields("images", index, image, {"id": int, "file_name": str, "width": int, "height": int})
        if image["width"] <= 0 or image["height"] <= 0:
            fail(f"images[{index}] (id {image['id']}) has a non-positive size {image['width']}x{image['height']}")
        if image["id"] in image_ids:
            fail(f"duplicate image id {image['id']}")
        image_ids.add(image["id"])
    annotation_ids = set()
    for index, annotation in enumerate(data["annotations"]):
        check_fields("annotations", index, annotation, {"id": int, "image_id": int, "category_id": int, "bbox": list})
        if annotation["id"] in annotation_ids:
            fail(f"duplicate annotation id {annotation['id']}")
        annotation_ids.add(annotation["id"])
        bbox = annotation["bbox"]
        if len(bbox) != 4 or not all(isinstance(v, Real) and np.isfinite(v) for v in bbox):
            fail(f"annotations[{index}] (id {annotation['id']}): 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox}")
        if annotation["image_id"] not in image_ids:
            fail(f"annotations[{index}] (id {annotation['id']}) refers to image_id {annotation['image_id']}, which is not in 'images'")
        if annotation["category_id"] not in category_ids:
            fail(
                f"annotations[{index}] (id {annotation['id']}) has category_id {annotation['category_id']}, "
                f"which is not in 'categories' (ids {sorted(category_ids)})"
            )
        segmentation = annotation.get("segmentation")
        if segmentation is not None and not isinstance(segmentation, (list, dict)):
            fail(f"annotations[{index}] (id {annotation['id']}): 'segmentation' must be polygons or RLE")
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", float(bbox[2] * bbox[3]))
    return data


def coco_from_dict(data: dict):
    """A pycocotools ``COCO`` index over already loaded annotations, without its chatter."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection dataset.

    Args:
        image_root: folder the images' ``file_name`` entries are relative to.
        ann_file: the COCO annotation JSON.
        transforms: ``(image, target, generator) -> (image, target)`` (see ``transforms``).
        semantic: how the semantic map is made, one of :data:`~sfpn.semantic_labels.SEMANTIC_SOURCES`.
        semantic_dir: for ``semantic="png"``: folder of label PNGs named like the images (with
            ``.png``), or a folder holding one such folder per split named like the image folder
            (COCO-stuff's ``stuffthingmaps_trainval2017`` holds ``train2017/`` and ``val2017/``).
        semantic_lookup: raw PNG value -> semantic label. The default reads COCO-stuff's
            ``stuffthingmaps`` convention, raw value = category id - 1 (255 unlabelled), into the
            semantic labels of those categories; a category the dataset does not list is ignored.
        coco_stuff: add COCO-stuff's 91 stuff categories (:mod:`sfpn.data.coco_stuff`, ids
            92..182) to the file's categories, for COCO's ``instances_*.json`` (which list
            things only) with COCO-stuff's label maps.
        return_masks: add the instances' ``masks`` to the target (for Mask R-CNN).
        remove_empty: drop images without a non-crowd annotation whose box is usable (for
            training; evaluation keeps every image).
        panoptic: the images' COCO panoptic ground truth, a
            :class:`~sfpn.data.panoptic.PanopticGroundTruth` (which imports this module, hence
            no annotation), for evaluation (``self.panoptic``, None without); it must annotate
            every image.

    Items are ``(image, target)``: ``image`` (3, H, W) float32 RGB in [0, 1]; ``target`` holds
    ``boxes`` (K, 4) float32 xyxy, ``labels`` (K,) int64 in 1..num_classes, ``crowd_boxes``
    (C, 4), optionally ``masks`` (K, H, W) uint8 and ``semantic`` (H, W) int64 (0 background,
    then the ``semantic_class_names``, 255 ignored), and
    ``image_id`` and ``orig_size`` (H, W before the transforms) for evaluation.

    An item is indexed by ``i`` or by ``(i, seed)``: the seed drives the random transforms, so
    the training sampler decides each sample's augmentation (``i`` alone seeds them with ``i``).
    """

    def __init__(
        self,
        image_root: str,
        ann_file: str,
        transforms: Callable | None = None,
        semantic: str = "masks",
        semantic_dir: str | None = None,
        semantic_lookup: dict[int, int] | np.ndarray | None = None,
        coco_stuff: bool = False,
        return_masks: bool = False,
        remove_empty: bool = False,
        check_images: bool = True,
        panoptic=None,
    ):
        if semantic not in SEMANTIC_SOURCES:
            raise ValueError(f"semantic must be one of {SEMANTIC_SOURCES}, got {semantic!r}")
        if semantic == "png" and not semantic_dir:
            raise ValueError("semantic='png' needs semantic_dir, the folder of label PNGs")
        if not os.path.isdir(image_root):
            raise FileNotFoundError(f"image folder not found: {image_root} (for {ann_file})")
        self.image_root = image_root
        self.ann_file = ann_file
        self.transforms = transforms
        self.semantic = semantic
        if semantic_dir is not None:
            split_dir = os.path.join(semantic_dir, os.path.basename(os.path.normpath(image_root)))
            semantic_dir = split_dir if os.path.isdir(split_dir) else semantic_dir
        self.semantic_dir = semantic_dir
        self.return_masks = return_masks

        self.coco = coco_from_dict(load_coco_annotations(ann_file))
        categories = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        if coco_stuff:
            listed = {c["id"] for c in categories}
            categories = sorted(categories + [c for c in COCO_STUFF_CATEGORIES if c["id"] not in listed], key=lambda c: c["id"])
        things = [c for c in categories if c.get("isthing", 1)]
        stuff = [c for c in categories if not c.get("isthing", 1)]
        #: label (1..num_classes) -> COCO category id; index 0 is background.
        self.label_to_category_id = [0] + [c["id"] for c in things]
        self.category_id_to_label = {c["id"]: label for label, c in enumerate(things, start=1)}
        self.class_names = [c["name"] for c in things]
        #: The classes of the semantic maps after background (0): the things, then (from label
        #: PNGs) the stuff.
        semantic_stuff = stuff if semantic == "png" else []
        self.semantic_class_names = self.class_names + [c["name"] for c in semantic_stuff]
        #: semantic class -> COCO category id; index 0 is background.
        self.semantic_to_category_id = self.label_to_category_id + [c["id"] for c in semantic_stuff]
        if semantic_lookup is None:  # COCO-stuff's stuffthingmaps: raw value = category id - 1
            semantic_lookup = {c["id"] - 1: label for label, c in enumerate(things + stuff, start=1) if 0 < c["id"] <= 255}
        self.semantic_lookup = semantic_lookup

        self.degenerate_annotation_ids = self._find_degenerate_annotations()
        image_ids = sorted(self.coco.imgs)
        if remove_empty:
            image_ids = [i for i in image_ids if any(not a["iscrowd"] for a in self.annotations(i))]
            if not image_ids:
                raise AnnotationError(f"{ann_file}: no image has a non-crowd annotation with a usable box")
        self.image_ids = image_ids
        if panoptic is not None:
            unannotated = sorted(set(image_ids) - set(panoptic.annotations))
            if unannotated:
                raise AnnotationError(f"{panoptic.json_file} has no panoptic annotation of the images {unannotated[:10]} of {ann_file}")
        self.panoptic = panoptic
        if check_images:
            for image_id in image_ids:
                path = self.image_path(image_id)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"image {path} (image id {image_id} in {ann_file}) not found")

    def _find_degenerate_annotations(self) -> set[int]:
        """Ids of the annotations whose boxes are degenerate; warns once with the count per reason."""
        degenerate, reasons = set(), Counter()
        for annotation in self.coco.dataset["annotations"]:
            info = self.coco.imgs[annotation["image_id"]]
            reason = degenerate_box_reason(annotation["bbox"], info["width"], info["height"])
            if reason is not None:
                degenerate.add(annotation["id"])
                reasons[reason] += 1
        if reasons:
            counts = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
            warnings.warn(
                f"{self.ann_file}: dropped {len(degenerate)} annotations with degenerate boxes ({counts})",
                DegenerateBoxWarning,
                stacklevel=3,
            )
        return degenerate

    def annotations(self, image_id: int) -> list[dict]:
        """The image's annotations of things, without those with degenerate boxes."""
        return [
            a for a in self.coco.imgToAnns[image_id]
            if a["id"] not in self.degenerate_annotation_ids and a["category_id"] in self.category_id_to_label
        ]

    @property
    def num_classes(self) -> int:
        """Thing classes: the detector's labels are 1..num_classes."""
        return len(self.class_names)

    @property
    def num_stuff_classes(self) -> int:
        """Stuff classes the semantic maps label after the things (0 unless from label PNGs)."""
        return len(self.semantic_class_names) - self.num_classes

    def image_path(self, image_id: int) -> str:
        return os.path.join(self.image_root, self.coco.imgs[image_id]["file_name"])

    def aspect_ratio_groups(self) -> list[int]:
        """Per item: 0 for landscape (width >= height), 1 for portrait, from the annotation file."""
        return [int(self.coco.imgs[i]["width"] < self.coco.imgs[i]["height"]) for i in self.image_ids]

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, key)
        image_id = self.image_ids[index]
        image = self._load_image(image_id)
        target = self._load_target(image_id)
        if self.transforms is not None:
            generator = torch.Generator().manual_seed(int(seed))
            image, target = self.transforms(image, target, generator)
        return image, target

    def _load_image(self, image_id: int) -> torch.Tensor:
        info = self.coco.imgs[image_id]
        path = self.image_path(image_id)
        try:
            with Image.open(path) as pil:
                image = _rgb_tensor(pil)
        except FileNotFoundError:
            raise FileNotFoundError(f"image {path} (image id {image_id} in {self.ann_file}) not found") from None
        except OSError as error:
            raise OSError(f"cannot read image {path} (image id {image_id} in {self.ann_file}): {error}") from None
        if image.shape[1:] != (info["height"], info["width"]):
            raise ValueError(
                f"image {path} is {image.shape[2]}x{image.shape[1]} but {self.ann_file} says "
                f"{info['width']}x{info['height']} (image id {image_id})"
            )
        return image

    def _load_target(self, image_id: int) -> dict:
        info = self.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        annotations = self.annotations(image_id)
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, width)
        boxes[:, 1::2].clamp_(0, height)
        labels = torch.tensor([self.category_id_to_label[a["category_id"]] for a in annotations], dtype=torch.int64)
        iscrowd = torch.tensor([bool(a["iscrowd"]) for a in annotations], dtype=torch.bool)
        target = {
            "image_id": image_id,
            "orig_size": (height, width),
            "boxes": boxes[~iscrowd],
            "labels": labels[~iscrowd],
            "crowd_boxes": boxes[iscrowd],
        }
        if self.return_masks or self.semantic == "masks":
            masks = torch.zeros((len(annotations), height, width), dtype=torch.uint8)
            for k, annotation in enumerate(annotations):
                masks[k] = torch.from_numpy(self._instance_mask(annotation, height, width))
        if self.return_masks:
            target["masks"] = masks[~iscrowd]
        if self.semantic == "masks":
            target["semantic"] = semantic_from_masks(masks, labels, iscrowd)
        elif self.semantic == "boxes":
            target["semantic"] = semantic_from_boxes(boxes, labels, (height, width), iscrowd)
        elif self.semantic == "png":
            stem = os.path.splitext(info["file_name"])[0]
            path = os.path.join(self.semantic_dir, stem + ".png")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"semantic label PNG {path} (image id {image_id}) not found")
            semantic = read_label_png(path, self.semantic_lookup)
            if semantic.shape != (height, width):
                raise ValueError(f"semantic label PNG {path} is {tuple(semantic.shape)}, the image {(height, width)}")
            target["semantic"] = semantic
        return target

    def _instance_mask(self, annotation: dict, height: int, width: int) -> np.ndarray:
        """(H, W) uint8 mask from the polygons or RLE; the filled box where there is none."""
        segmentation = annotation.get("segmentation")
        if segmentation:
            from pycocotools import mask as mask_utils

            try:
                if isinstance(segmentation, list):
                    polygons = [p for p in segmentation if len(p) >= 6]
                    if polygons:
                        return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
                elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
                    return mask_utils.decode(mask_utils.frPyObjects(segmentation, height, width))
                else:
                    return mask_utils.decode(segmentation)
            except (ValueError, TypeError, KeyError) as error:
                raise AnnotationError(
                    f"{self.ann_file}: annotation id {annotation['id']} has an invalid 'segmentation' ({error})"
                ) from None
        mask = np.zeros((height, width), dtype=np.uint8)
        x, y, w, h = annotation["bbox"]
        mask[max(0, round(y)) : round(y + h), max(0, round(x)) : round(x + w)] = 1
        return mask


def _rgb_tensor(pil: Image.Image) -> torch.Tensor:
    """A Pillow image as ``(3, H, W)`` float32 RGB in [0, 1]."""
    if pil.mode.startswith("I"):
        # 16-bit grayscale ("I;16*", or "I" from older Pillow): convert("RGB") would clip every
        # value above 255 to white, so scale by the 16-bit range instead.
        gray = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 65535).clamp_(0, 1)
        return gray.expand(3, *gray.shape).contiguous()
    array = np.asarray(pil.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def collate(batch):
    """``[(image, target), ...]`` -> ``(images, targets)`` lists (images differ in size)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
