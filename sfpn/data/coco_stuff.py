"""COCO-stuff's stuff categories, for training on COCO's things and COCO-stuff's stuff together.

COCO's ``instances_*.json`` list the 80 thing categories only; COCO-stuff's label maps
(``stuffthingmaps_trainval2017``: 8-bit PNGs, value = category id - 1, 255 unlabelled) also
label 91 stuff categories, ids 92 to 182 (the names of COCO-stuff's ``labels.md``).
``CocoDetection(..., coco_stuff=True)`` (``data.coco_stuff``) adds these to the annotation
file's categories, so that the semantic branch learns things and stuff.
"""
from __future__ import annotations

#: First stuff category id of COCO-stuff (ids 92..182, in the order of the names below).
FIRST_ID = 92
_NAMES = (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower",
    "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow",
    "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete",
    "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind",
    "window-other", "wood",
)
#: The 91 stuff categories as COCO category entries.
COCO_STUFF_CATEGORIES = tuple({"id": FIRST_ID + k, "name": name, "isthing": 0} for k, name in enumerate(_NAMES))
