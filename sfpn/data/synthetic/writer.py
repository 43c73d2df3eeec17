"""The synthetic datasets' cache and COCO writer: ``synthetic_dataset(spec)``.

A synthetic dataset is a regular COCO-format dataset generated on first use into a cache folder,
``$SFPN_CACHE`` or ``~/.cache/sfpn``, one subfolder per spec (``DatasetSpec.folder_name()``).
Its things (the objects) and stuff (the background's regions) are written as COCO-stuff and
COCO panoptic write them, for each split ``<split>`` (``train``, ``val``)::

    <folder>/<split>/000000.png ...                     the images
    <folder>/annotations/<split>.json                   COCO instances: images, one annotation
                                                        (RLE mask, box, area) per thing, and the
                                                        categories, things then stuff, each with
                                                        isthing 1 or 0
    <folder>/stuffthingmaps/<split>/000000.png ...      label maps as COCO-stuff's stuffthingmaps:
                                                        8-bit, category id - 1 for things and
                                                        stuff alike, 255 unlabelled
    <folder>/annotations/panoptic_<split>.json          COCO panoptic: images, per image its PNG's
                                                        file_name and segments_info (id,
                                                        category_id, iscrowd, bbox, area), the
                                                        categories
    <folder>/annotations/panoptic_<split>/000000.png    panoptic segment maps: RGB, segment id =
                                                        R + 256 G + 256^2 B, 0 unlabelled

Every pixel is a thing or stuff, but for the pixels of an object too little of which shows to
be annotated: unlabelled (255 in the label maps, segment 0 in the panoptic maps). Each thing is
one panoptic segment, each stuff category present in an image one segment (COCO's convention).

Generation is deterministic: each image is drawn from its own random stream seeded by
(seed, split, index), so the same spec gives byte-identical files on every machine.
"""
from __future__ import annotations

import abc
import dataclasses
import json
import os
import shutil
import tempfile
from typing import ClassVar

import numpy as np
from PIL import Image

SPLITS = {"train": 0, "val": 1}
#: The folder of the label maps, one subfolder per split, as COCO-stuff's stuffthingmaps_trainval2017.
LABEL_MAPS = "stuffthingmaps"
#: The label maps' value of an unlabelled pixel (COCO-stuff's).
IGNORE_VALUE = 255


@dataclasses.dataclass(frozen=True)
class DatasetSpec(abc.ABC):
    """What to draw: the fields every synthetic dataset has; each dataset subclasses it with its
    own fields, ``name``, ``version``, ``categories`` and ``render``."""

    #: The dataset's name in :data:`sfpn.data.synthetic.DATASETS` and its cache folders.
    name: ClassVar[str]
    #: Bumped whenever the generator changes, so a stale cache is never reused.
    version: ClassVar[int]
    #: The thing (object) category names: category id ``k + 1`` is ``categories[k]``.
    categories: ClassVar[tuple[str, ...]]
    #: The stuff category names, numbered after the things: id ``len(categories) + k + 1``.
    stuff_categories: ClassVar[tuple[str, ...]]

    seed: int = 0
    num_train: int = 1200
    num_val: int = 200

    def folder_name(self) -> str:
        return f"{self.name}-v{self.version}-seed{self.seed}-{self.num_train}-{self.num_val}"

    @abc.abstractmethod
    def render(self, rng: np.random.Generator) -> Rendering:
        """One image, all drawn from ``rng``."""

    def coco_categories(self) -> list[dict]:
        """The COCO category list: things, then stuff, each marked ``isthing`` 1 or 0."""
        return [
            {"id": k + 1, "name": name, "supercategory": "shape" if k < len(self.categories) else "material",
             "isthing": int(k < len(self.categories))}
            for k, name in enumerate(self.categories + self.stuff_categories)
        ]


@dataclasses.dataclass(frozen=True)
class Rendering:
    """One generated image: ``pixels`` (H, W, 3) uint8; ``objects``, [(category id, visible mask
    (H, W) uint8)] of its annotated things; ``categories`` (H, W) uint8, each pixel's category id
    (thing or stuff), 0 where unlabelled."""

    pixels: np.ndarray
    objects: list[tuple[int, np.ndarray]]
    categories: np.ndarray


@dataclasses.dataclass(frozen=True)
class SyntheticSplit:
    """The files of one split (see the module docstring)."""

    image_root: str
    ann_file: str
    #: The split's label maps; the folder above it, ``<folder>/stuffthingmaps``, holds one per split.
    semantic_dir: str
    panoptic_file: str
    panoptic_dir: str


def cache_dir() -> str:
    return os.environ.get("SFPN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sfpn")


def synthetic_dataset(spec: DatasetSpec, root: str | None = None, progress: bool = True) -> dict[str, SyntheticSplit]:
    """The paths of the train and val splits of ``spec``'s dataset, generating them first if needed.

    Generation writes into a temporary folder beside the target and renames it into place, so
    an interrupted generation leaves nothing behind and concurrent processes (DDP ranks) are safe:
    the first rename wins and the others discard their copy.
    """
    root = root or cache_dir()
    folder = dataset_folder(spec, root)
    splits = split_paths(folder)
    if all(os.path.isfile(s.ann_file) for s in splits.values()):
        return splits
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{spec.folder_name()}-", dir=root)
    try:
        _generate(spec, staging, progress)
        try:
            os.rename(staging, folder)
        except OSError:
            if not all(os.path.isfile(s.ann_file) for s in splits.values()):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return splits


def dataset_folder(spec: DatasetSpec, root: str | None = None) -> str:
    """Where ``spec``'s dataset is (or will be) cached under ``root`` (default :func:`cache_dir`)."""
    return os.path.join(root or cache_dir(), spec.folder_name())


def label_maps_dir(spec: DatasetSpec, root: str | None = None) -> str:
    """The folder of ``spec``'s label maps, one subfolder per split named like the split's image
    folder: what ``CocoDetection``'s ``semantic_dir`` (``data.semantic_dir``) takes for both splits."""
    return os.path.join(dataset_folder(spec, root), LABEL_MAPS)


def split_files(spec: DatasetSpec, root: str | None = None) -> dict[str, SyntheticSplit]:
    """The files of each split of ``spec``'s dataset, where :func:`synthetic_dataset` writes them."""
    return split_paths(dataset_folder(spec, root))


def split_paths(folder: str) -> dict[str, SyntheticSplit]:
    """The files of each split of the dataset in ``folder`` (see the module docstring)."""
    return {
        split: SyntheticSplit(
            image_root=os.path.join(folder, split),
            ann_file=os.path.join(folder, "annotations", f"{split}.json"),
            semantic_dir=os.path.join(folder, LABEL_MAPS, split),
            panoptic_file=os.path.join(folder, "annotations", f"panoptic_{split}.json"),
            panoptic_dir=os.path.join(folder, "annotations", f"panoptic_{split}"),
        )
        for split in SPLITS
    }


def _generate(spec: DatasetSpec, folder: str, progress: bool) -> None:
    from tqdm import tqdm

    categories = spec.coco_categories()
    for split, paths in split_paths(folder).items():
        for directory in (paths.image_root, paths.semantic_dir, paths.panoptic_dir):
            os.makedirs(directory)
        count = spec.num_train if split == "train" else spec.num_val
        images, annotations, panoptic = [], [], []
        for index in tqdm(range(count), desc=f"generating synthetic {split}", disable=not progress, leave=False):
            rendering = spec.render(np.random.default_rng([spec.seed, SPLITS[split], index]))
            height, width = rendering.categories.shape
            file_name = f"{index:06d}.png"
            image_id = index + 1
            Image.fromarray(rendering.pixels).save(os.path.join(paths.image_root, file_name))
            labels = np.where(rendering.categories > 0, rendering.categories - 1, IGNORE_VALUE).astype(np.uint8)
            Image.fromarray(labels).save(os.path.join(paths.semantic_dir, file_name))
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for label, mask in rendering.objects:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                    **_mask_annotation(mask, with_rle=True), "iscrowd": 0})
            segment_ids, segments_info = _panoptic_segments(rendering, len(spec.categories))
            Image.fromarray(_segment_colours(segment_ids)).save(os.path.join(paths.panoptic_dir, file_name))
            panoptic.append({"image_id": image_id, "file_name": file_name, "segments_info": segments_info})
        with open(paths.ann_file, "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        with open(paths.panoptic_file, "w") as f:
            json.dump({"images": images, "annotations": panoptic, "categories": categories}, f)


def _mask_annotation(mask: np.ndarray, with_rle: bool) -> dict:
    """A (H, W) uint8 mask's COCO ``bbox`` [x, y, w, h] and ``area``, and its RLE ``segmentation``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask))
    fields = {"bbox": mask_utils.toBbox(rle).tolist(), "area": float(mask_utils.area(rle))}
    if with_rle:
        fields["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return fields


def _panoptic_segments(rendering: Rendering, num_things: int) -> tuple[np.ndarray, list[dict]]:
    """(H, W) int64 segment ids (0 unlabelled) and their ``segments_info``: one segment per
    annotated thing, then one per stuff category present, ids from 1 in that order."""
    segment_ids = np.zeros(rendering.categories.shape, dtype=np.int64)
    stuff = [int(c) for c in np.unique(rendering.categories) if c > num_things]
    masks = [(label, mask.astype(bool)) for label, mask in rendering.objects]
    masks += [(category, rendering.categories == category) for category in stuff]
    segments_info = []
    for segment_id, (category, mask) in enumerate(masks, start=1):
        segment_ids[mask] = segment_id
        fields = _mask_annotation(mask.astype(np.uint8), with_rle=False)
        segments_info.append({"id": segment_id, "category_id": category, "iscrowd": 0,
                              "bbox": [int(v) for v in fields["bbox"]], "area": int(fields["area"])})
    return segment_ids, segments_info


def _segment_colours(segment_ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 as COCO panoptic stores them: id = R + 256 G + 256^2 B."""
    return np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536 % 256], axis=-1).astype(np.uint8)
