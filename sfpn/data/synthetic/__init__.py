"""Synthetic COCO-format datasets of things and stuff, generated on first use: nothing to download.

Each image has things (objects of the dataset's ``categories``) on regions of stuff (materials of
its ``stuff_categories``), written as COCO-stuff and COCO panoptic write them: instance
annotations of the things, label maps of things and stuff, panoptic segment maps, and a
category list marking each class ``isthing`` 1 or 0.

:data:`DATASETS` maps each dataset's name to its spec class; ``python -m sfpn.train --dataset
NAME`` and ``python -m sfpn.study --dataset NAME`` take their choices from it. A spec says what
to draw (``ShapesSpec(seed=1)``); :func:`synthetic_dataset` generates and caches its splits
(see :mod:`~sfpn.data.synthetic.writer` for the files):

    splits = synthetic_dataset(DATASETS["clutter"](seed=0))
    splits["train"].image_root, splits["train"].ann_file

Modules: ``writer`` (cache and COCO files: the paths are in its docstring), ``drawing`` (what the
generators share: stuff regions and materials, object poses and placement, annotation), one
module per dataset (``shapes``, ``clutter``).
"""
from .clutter import ClutterSpec
from .shapes import ShapesSpec
from .writer import DatasetSpec, Rendering, SyntheticSplit, cache_dir, label_maps_dir, split_files, synthetic_dataset

#: The synthetic datasets: name -> spec class, called with the spec's fields (``seed=...``).
DATASETS: dict[str, type[DatasetSpec]] = {spec.name: spec for spec in (ShapesSpec, ClutterSpec)}

__all__ = ["DATASETS", "ClutterSpec", "DatasetSpec", "Rendering", "ShapesSpec", "SyntheticSplit", "cache_dir", "label_maps_dir",
           "split_files", "synthetic_dataset"]
