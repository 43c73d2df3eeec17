"""Synthetic COCO-format datasets, generated on first use: nothing to download.

:data:`DATASETS` maps each dataset's name to its spec class; ``python -m sfpn.train --dataset
NAME`` and ``python -m sfpn.study --dataset NAME`` take their choices from it. A spec says what
to draw (``ShapesSpec(seed=1)``); :func:`synthetic_dataset` generates and caches its splits
(see :mod:`~sfpn.data.synthetic.writer` for the files):

    splits = synthetic_dataset(DATASETS["clutter"](seed=0))
    splits["train"].image_root, splits["train"].ann_file

Modules: ``writer`` (cache and COCO files), ``drawing`` (what the generators share), one module
per dataset (``shapes``, ``clutter``).
"""
from .clutter import ClutterSpec
from .shapes import ShapesSpec
from .writer import DatasetSpec, SyntheticSplit, cache_dir, synthetic_dataset

#: The synthetic datasets: name -> spec class, called with the spec's fields (``seed=...``).
DATASETS: dict[str, type[DatasetSpec]] = {spec.name: spec for spec in (ShapesSpec, ClutterSpec)}

__all__ = ["DATASETS", "ClutterSpec", "DatasetSpec", "ShapesSpec", "SyntheticSplit", "cache_dir", "synthetic_dataset"]
