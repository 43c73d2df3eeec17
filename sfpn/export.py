"""Export a detector with ``torch.export``: ``python -m sfpn.export OUTPUT_DIR``.

Writes ``OUTPUT_DIR/model.pt2`` (``torch.export.save``) and ``OUTPUT_DIR/export.json`` (the
classes, the model config and the interface below), from a training checkpoint
(``--checkpoint``) or from a preset with random weights (``--preset NAME --num-classes K``).

The exported program's interface:

- input ``images (N, 3, H, W)`` float32 RGB in ``[0, 1]`` (the program normalises them as the
  detector does). ``N`` is fixed at export (``--batch-size``); ``H`` and ``W`` are dynamic,
  multiples of the detector's ``size_divisibility`` (32) from 128 to ``--max-size``. Pad
  other images at the bottom and right (or resize them) to such a size: the program treats the
  whole ``H x W`` as the image, so boxes are clipped to it and masks and semantic maps cover it.
- output: a list of ``N`` dicts, exactly the eager detector's eval output for those images:
  ``boxes (D, 4)`` xyxy in input pixels, ``scores (D,)``, ``labels (D,)`` int64 in
  ``1..num_classes`` (``export.json``'s ``classes[label - 1]`` names them), plus ``masks (D, H, W)``
  bool for Mask R-CNN and ``semantic (H, W)`` int64 for SFPN detectors. ``D`` depends on the data
  (at most ``detections_per_image``).

Loading it needs sfpn's custom ops (``torch.ops.sfpn.*``, which the graph calls), so import
``sfpn`` first, in the deploying process too::

    import sfpn  # noqa: F401  (registers torch.ops.sfpn.*)
    program = torch.export.load("OUTPUT_DIR/model.pt2").module()
    detections = program(images)

With ``--panoptic`` (an SFPN detector), each dict also holds the panoptic segmentation, the
merge of :func:`sfpn.modeling.panoptic.panoptic_merge` with the thresholds of the config's
``panoptic`` section, traced (the instances go through a ``scan``):

- ``panoptic (H, W)`` int32 segment ids, 0 void;
- ``panoptic_instance_ids (D,)`` int32: detection ``d``'s segment id (0: not in the result);
- ``panoptic_stuff_ids (S,)`` int32: the segment id of each stuff class of
  ``export.json``'s ``panoptic.stuff_classes`` (semantic class ids; 0: none).

The segment of an instance has the detection's label as its class; a segment's area is its
pixel count in ``panoptic``.

In the traced graph Mask R-CNN pastes all of an image's masks in one ``grid_sample`` (eager
chunks them to bound memory), so its peak memory grows with ``D x H x W``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

from .modeling.panoptic import instance_masks_by_score, paint_segments

#: Smallest exported height and width, in units of ``size_divisibility`` (32): 128 px keeps P6
#: (stride 64) at least 2 x 2, since tracing specialises a dimension of size 1 to a constant.
MIN_BLOCKS = 4
MODEL_FILE = "model.pt2"
METADATA_FILE = "export.json"


class ExportableDetector(nn.Module):
    """The eval forward of a detector on a batch tensor: ``images (N, 3, H, W)`` -> the
    detector's list of ``N`` detection dicts, with the panoptic result when ``panoptic`` (see the
    module docstring)."""

    def __init__(self, detector: nn.Module, panoptic: bool = False):
        super().__init__()
        self.detector = detector
        self.stuff_classes = stuff_classes(detector) if panoptic else None

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        outputs = self.detector(list(images.unbind(0)))
        if self.stuff_classes is None:
            return outputs
        config = self.detector.config.panoptic
        for output in outputs:
            # The detector's labels are its semantic thing classes (the branch numbers them alike).
            order, masks = instance_masks_by_score(output["boxes"], output["scores"], output["labels"], output["semantic"],
                                                   config.score_threshold, output.get("masks"))
            segment_ids, ids_by_score, stuff_ids = paint_segments(masks, output["semantic"], self.stuff_classes,
                                                                  config.overlap_threshold, config.stuff_min_area)
            output["panoptic"] = segment_ids
            output["panoptic_instance_ids"] = torch.zeros_like(ids_by_score).scatter_(0, order, ids_by_score)
            output["panoptic_stuff_ids"] = stuff_ids
        return outputs


def stuff_classes(detector: nn.Module) -> list[int]:
    """The semantic class ids of the stuff classes (after the thing classes); ``ValueError`` for
    a detector without the semantic branch."""
    if not getattr(detector.neck, "has_semantic_branch", False) or detector.config is None:
        raise ValueError("panoptic: the panoptic result needs an SFPN detector (the semantic branch on) built from a config")
    things, stuff = detector.config.num_classes, detector.config.num_stuff_classes
    return list(range(things + 1, things + stuff + 1))


def _check_size(name: str, value: int, divisor: int, max_size: int) -> None:
    if value % divisor or not MIN_BLOCKS * divisor <= value <= max_size:
        raise ValueError(
            f"{name} must be a multiple of {divisor} (the detector's size_divisibility) in "
            f"[{MIN_BLOCKS * divisor}, {max_size}], got {value}"
        )


def export_detector(detector: nn.Module, batch_size: int = 1, height: int = 320, width: int = 320,
                    max_size: int = 2048, panoptic: bool = False) -> torch.export.ExportedProgram:
    """Exports ``detector``'s eval forward (the detector is put in eval mode).

    Args:
        detector: an sfpn detector (``sfpn.build_detector`` or a checkpoint's).
        batch_size: ``N``, the fixed number of images per call.
        height, width: size of the example batch traced; any multiple of ``size_divisibility``
            in the exported range works at run time.
        max_size: largest height and width the program accepts (a multiple of
            ``size_divisibility``).
        panoptic: the outputs hold the panoptic result too (an SFPN detector only).
    """
    divisor = detector.size_divisibility
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_size % divisor or max_size < MIN_BLOCKS * divisor:
        raise ValueError(f"max_size must be a multiple of {divisor} and at least {MIN_BLOCKS * divisor}, got {max_size}")
    _check_size("height", height, divisor, max_size)
    _check_size("width", width, divisor, max_size)
    module = ExportableDetector(detector, panoptic)
    detector.eval()
    device = next(detector.parameters()).device
    images = torch.rand(batch_size, 3, height, width, device=device)
    # Sizes as multiples of the divisor, so no padding is traced and every level's size is exact.
    blocks = {name: torch.export.Dim(name, min=MIN_BLOCKS, max=max_size // divisor) for name in ("height", "width")}
    dynamic_shapes = {"images": {2: divisor * blocks["height"], 3: divisor * blocks["width"]}}
    with torch.no_grad():
        return torch.export.export(module, (images,), dynamic_shapes=dynamic_shapes, strict=False)


def interface(detector: nn.Module, batch_size: int, max_size: int, panoptic: bool = False) -> dict:
    """The exported program's input and outputs, as ``export.json`` records them."""
    outputs = ["boxes", "scores", "labels"]
    if hasattr(detector.roi_heads, "mask_head"):
        outputs.append("masks")
    if getattr(detector.neck, "has_semantic_branch", False):
        outputs += ["semantic", "semantic_logits"]
    extra = {}
    if panoptic:
        outputs += ["panoptic", "panoptic_instance_ids", "panoptic_stuff_ids"]
        extra["panoptic"] = {"stuff_classes": stuff_classes(detector)}
    divisor = detector.size_divisibility
    size = {"multiple_of": divisor, "min": MIN_BLOCKS * divisor, "max": max_size}
    return {
        "input": {"name": "images", "shape": [batch_size, 3, "H", "W"], "dtype": "float32",
                  "value_range": [0.0, 1.0], "channels": "RGB", "height": size, "width": size},
        "outputs": outputs,
        **extra,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sfpn.export",
        description=f"Export a detector's inference forward with torch.export: OUTPUT_DIR/{MODEL_FILE} and {METADATA_FILE}.",
        epilog="Load it with `import sfpn; torch.export.load(path).module()` (importing sfpn registers its ops).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("output_dir", help=f"where {MODEL_FILE} and {METADATA_FILE} are written")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint file, or a training output folder (its last checkpoint)")
    source.add_argument("--preset", help="export this preset with random weights (see sfpn.list_presets()); needs --num-classes")
    parser.add_argument("--num-classes", type=int, help="foreground classes of --preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a model config key of --preset (repeatable), e.g. roi_heads.score_threshold=0.3")
    parser.add_argument("--batch-size", type=int, default=1, help="images per call (fixed in the exported program)")
    parser.add_argument("--height", type=int, default=320, help="height of the example batch traced (multiple of 32)")
    parser.add_argument("--width", type=int, default=320, help="width of the example batch traced (multiple of 32)")
    parser.add_argument("--max-size", type=int, default=2048, help="largest height and width the program accepts")
    parser.add_argument("--device", default="cpu", help="device the program is traced for and runs on")
    parser.add_argument("--panoptic", action="store_true", help="the outputs hold the panoptic segmentation too (SFPN detectors)")
    return parser.parse_args(argv)


def _load_detector(args) -> tuple[nn.Module, list[str], dict]:
    """The detector, its class names and where it came from (``ValueError`` for bad arguments)."""
    if args.checkpoint is not None:
        if args.num_classes is not None or args.overrides:
            raise ValueError("--num-classes and --set go with --preset; a checkpoint brings its own config")
        from .engine.checkpoint import model_from_checkpoint, resolve_checkpoint

        path = resolve_checkpoint(args.checkpoint)
        detector, meta = model_from_checkpoint(path, args.device)
        classes = list(meta.get("classes") or [])
        return detector, classes, {"checkpoint": os.path.abspath(path), "preset": meta.get("preset")}
    if args.num_classes is None:
        raise ValueError("--preset needs --num-classes")
    from .modeling import build_detector

    overrides = {}
    for pair in args.overrides:
        key, separator, value = pair.partition("=")
        if not separator:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key] = value
    detector = build_detector(args.preset, args.num_classes, **overrides).to(args.device)
    return detector, [f"class_{i}" for i in range(1, args.num_classes + 1)], {"preset": args.preset, "weights": "random"}


def main(argv=None) -> str:
    """Runs the command line; returns the path of the written ``model.pt2``."""
    args = parse_args(argv)
    from .engine.checkpoint import config_to_dict
    try:
        detector, classes, source = _load_detector(args)
        started = time.perf_counter()
        program = export_detector(detector, args.batch_size, args.height, args.width, args.max_size, args.panoptic)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    seconds = time.perf_counter() - started
    os.makedirs(args.output_dir, exist_ok=True)
    model_path = os.path.join(args.output_dir, MODEL_FILE)
    torch.export.save(program, model_path)
    metadata = {
        "format": "torch.export",
        "torch_version": torch.__version__,
        "load": "import sfpn; torch.export.load(path).module()(images)",
        **source,
        "classes": classes,
        **interface(detector, args.batch_size, args.max_size, args.panoptic),
        "model_config": config_to_dict(detector.config),
        "export_seconds": round(seconds, 1),
    }
    with open(os.path.join(args.output_dir, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2)
    print(f"exported in {seconds:.0f} s: {model_path} (interface in {METADATA_FILE})")
    return model_path


if __name__ == "__main__":
    main()
    sys.exit(0)
