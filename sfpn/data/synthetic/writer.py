"""The synthetic datasets' cache and COCO writer: ``synthetic_dataset(spec)``.

A synthetic dataset is a regular COCO-format dataset (JSON + PNG images) generated on first use
into a cache folder, ``$SFPN_CACHE`` or ``~/.cache/sfpn``, one subfolder per spec
(``DatasetSpec.folder_name()``)::

    <folder>/train/000000.png ...           the images of each split
    <folder>/val/000000.png ...
    <folder>/annotations/train.json         COCO instances: images, annotations (RLE masks), categories
    <folder>/annotations/val.json

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


@dataclasses.dataclass(frozen=True)
class DatasetSpec(abc.ABC):
    """What to draw: the fields every synthetic dataset has; each dataset subclasses it with its
    own fields, ``name``, ``version``, ``categories`` and ``render``."""

    #: The dataset's name in :data:`sfpn.data.synthetic.DATASETS` and its cache folders.
    name: ClassVar[str]
    #: Bumped whenever the generator changes, so a stale cache is never reused.
    version: ClassVar[int]
    #: The category names; category id ``k + 1`` is ``categories[k]``.
    categories: ClassVar[tuple[str, ...]]

    seed: int = 0
    num_train: int = 1200
    num_val: int = 200

    def folder_name(self) -> str:
        return f"{self.name}-v{self.version}-seed{self.seed}-{self.num_train}-{self.num_val}"

    @abc.abstractmethod
    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        """One image: ``(H, W, 3)`` uint8 pixels and its objects as (category id, visible mask
        ``(H, W)`` uint8), all drawn from ``rng``."""


@dataclasses.dataclass(frozen=True)
class SyntheticSplit:
    image_root: str
    ann_file: str


def cache_dir() -> str:
    return os.environ.get("SFPN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sfpn")


def synthetic_dataset(spec: DatasetSpec, root: str | None = None, progress: bool = True) -> dict[str, SyntheticSplit]:
    """The paths of the train and val splits of ``spec``'s dataset, generating them first if needed.

    Generation writes into a temporary folder beside the target and renames it into place, so
    an interrupted generation leaves nothing behind and concurrent processes (DDP ranks) are safe:
    the first rename wins and the others discard their copy.
    """
    root = root or cache_dir()
    folder = os.path.join(root, spec.folder_name())
    splits = {
        split: SyntheticSplit(os.path.join(folder, split), os.path.join(folder, "annotations", f"{split}.json"))
        for split in SPLITS
    }
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


def _generate(spec: DatasetSpec, folder: str, progress: bool) -> None:
    from pycocotools import mask as mask_utils
    from tqdm import tqdm

    os.makedirs(os.path.join(folder, "annotations"))
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(spec.categories)]
    for split, split_id in SPLITS.items():
        count = spec.num_train if split == "train" else spec.num_val
        os.makedirs(os.path.join(folder, split))
        images, annotations = [], []
        for index in tqdm(range(count), desc=f"generating synthetic {split}", disable=not progress, leave=False):
            rng = np.random.default_rng([spec.seed, split_id, index])
            pixels, objects = spec.render(rng)
            file_name = f"{index:06d}.png"
            Image.fromarray(pixels).save(os.path.join(folder, split, file_name))
            image_id = index + 1
            images.append({"id": image_id, "file_name": file_name, "width": pixels.shape[1], "height": pixels.shape[0]})
            for label, mask in objects:
                rle = mask_utils.encode(np.asfortranarray(mask))
                x, y, w, h = mask_utils.toBbox(rle).tolist()
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [x, y, w, h],
                    "area": float(mask_utils.area(rle)),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                    "iscrowd": 0,
                })
        with open(os.path.join(folder, "annotations", f"{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
