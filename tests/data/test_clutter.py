"""The second synthetic dataset: deterministic, its stated properties hold, loadable as COCO."""
import numpy as np

from sfpn.data.synthetic.clutter import CATEGORIES, ClutterSpec, render_image
from sfpn.data.coco import CocoDetection
from sfpn.data.synthetic import synthetic_dataset


def test_rendering_is_deterministic_and_has_the_stated_properties():
    spec = ClutterSpec()
    extents, sizes = [], set()
    for index in range(12):
        rendering = render_image(np.random.default_rng([5, 0, index]), spec)
        again = render_image(np.random.default_rng([5, 0, index]), spec)
        pixels, objects = rendering.pixels, rendering.objects
        assert np.array_equal(pixels, again.pixels) and np.array_equal(rendering.categories, again.categories)
        assert len(objects) == len(again.objects)
        height, width, _ = pixels.shape
        assert spec.min_side <= height <= spec.max_side and spec.min_side <= width <= spec.max_side
        sizes.add((height, width))
        covered = np.zeros((height, width), dtype=int)
        for label, mask in objects:
            assert 1 <= label <= len(CATEGORIES) and mask.shape == (height, width) and mask.sum() >= 12
            covered += mask
            ys, xs = np.nonzero(mask)
            extents.append(max(np.ptp(ys), np.ptp(xs)) + 1)
        assert covered.max() <= 1  # visible parts: each pixel belongs to one object at most
    assert len(sizes) == 12
    assert min(extents) <= 14 and max(extents) >= 80


def test_written_as_coco_and_loadable(tmp_path):
    splits = synthetic_dataset(ClutterSpec(seed=2, num_train=3, num_val=2), root=str(tmp_path), progress=False)
    dataset = CocoDetection(splits["val"].image_root, splits["val"].ann_file, semantic="masks")
    assert dataset.class_names == list(CATEGORIES) and len(dataset) == 2
    image, target = dataset[0]
    assert image.shape[-2:] == target["semantic"].shape and target["boxes"].shape[0] == target["labels"].shape[0]
