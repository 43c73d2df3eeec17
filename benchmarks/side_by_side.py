"""Issue 22's detector goals measured side by side: the COCO-shape rows of bench_detector.py
(SFPN, SFPN with a 128-wide semantic head, our FPN and torchvision's Faster R-CNN, each in fp32
and bf16) timed round-robin in one process, each goal read as a ratio paired within a round.

    python benchmarks/side_by_side.py [--rounds 5] [--runs step infer] [--rows ROW ...] [--json PATH]

Why: pytest-benchmark times one row's rounds back to back, then the next row's, so a drift of the
machine's speed between rows lands in their ratio. On the 2-core CPU a row moved by up to 20%
between runs (RESULTS.md, 2026-12-03), as much as the goals' margins. Here round ``r`` times every
row once, in turn, and a goal's ratio in round ``r`` compares two rows timed seconds apart; the
table gives each row's median and each goal's median paired ratio with its range over rounds.
One untimed warm-up round first. A run's models are built before its first round. ``--rows``
times a subset (a goal is read when both its rows are there): one row per process, for instance,
keeps the other models' memory out of its heap.
"""
from __future__ import annotations

import argparse
import json
import operator
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_detector import (  # noqa: E402
    BF16, INFERENCE_DETECTORS, check_detections, check_loss, coco_detector, coco_inference_batch,
    coco_step_batch, inference, training_step, with_bf16,
)
from sfpn.engine.precision import cpu_model  # noqa: E402
from sfpn.modeling import InferenceWeightCache  # noqa: E402

#: (goal, run, numerator row, denominator row, comparison, bound): met when the paired ratio
#: time[numerator] / time[denominator] compares so with the bound.
GOALS = [
    goal
    for suffix in ("", BF16)
    for sfpn in ("sfpn" + suffix, "sfpn-head128" + suffix)
    for goal in (
        (f"{sfpn} step >= 1.4x torchvision's speed", "step", "torchvision" + suffix, sfpn, operator.ge, 1.4),
        (f"{sfpn} inference faster than torchvision's", "infer", "torchvision" + suffix, sfpn, operator.gt, 1.0),
        (f"{sfpn} inference <= 1.2x our FPN's time", "infer", sfpn, "fpn" + suffix, operator.le, 1.2),
    )
]


def _row(run: str, impl: str, device: str):
    """``(call, check)`` for one row: ``call()`` runs what is timed, ``check`` its result."""
    torch.manual_seed(0)
    model, precision = coco_detector(impl, device)
    if run == "step":
        images, targets = coco_step_batch(impl, device)
        model.train()
        return (lambda: training_step(model, precision, images, targets, device)), check_loss
    images = coco_inference_batch(device)
    model.eval()
    cache = InferenceWeightCache()
    return (lambda: inference(model, precision, images, device, cache)), (lambda detections: check_detections(detections, images))


#: Every row, in the order a round times them.
ROWS = with_bf16(INFERENCE_DETECTORS)


def measure(run: str, rounds: int, device: str, impls: list[str] = ROWS) -> dict[str, list[float]]:
    """Seconds per round of each row in ``impls`` for ``run`` ("step" or "infer"), rows interleaved."""
    rows = {impl: _row(run, impl, device) for impl in impls}
    times: dict[str, list[float]] = {impl: [] for impl in rows}
    for r in range(rounds + 1):
        for impl, (call, check) in rows.items():
            start = time.perf_counter()
            result = call()
            seconds = time.perf_counter() - start
            check(result)
            if r:  # round 0 warms up
                times[impl].append(seconds)
        if r:
            print(f"{run} round {r}: " + ", ".join(f"{impl} {t[-1]:.2f} s" for impl, t in times.items()),
                  file=sys.stderr, flush=True)
    return times


def report(times: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: every row's median and per-round times, then the paired ratio of every goal
    whose two rows were timed."""
    lines = ["| run | row | median (ms) | per round (ms) |", "| --- | --- | ---: | --- |"]
    for run, rows in times.items():
        for impl, seconds in rows.items():
            lines.append(f"| {run} | {impl} | {statistics.median(seconds) * 1e3:.0f} | "
                         + ", ".join(f"{s * 1e3:.0f}" for s in seconds) + " |")
    lines += ["", "| goal | ratio | paired ratio, median | range over rounds | met |", "| --- | --- | ---: | --- | --- |"]
    for goal, run, numerator, denominator, compare, bound in GOALS:
        if numerator in times.get(run, {}) and denominator in times[run]:
            ratios = [n / d for n, d in zip(times[run][numerator], times[run][denominator])]
            median = statistics.median(ratios)
            lines.append(f"| {goal} | {numerator} / {denominator} | {median:.2f} | {min(ratios):.2f}-{max(ratios):.2f} | "
                         f"{'yes' if compare(median, bound) else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", nargs="+", default=["step", "infer"], choices=["step", "infer"])
    parser.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS, help="the rows to time (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="write every measurement here")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    load_before = os.getloadavg()
    rows = [impl for impl in ROWS if impl in args.rows]  # in the usual order, each once
    times = {run: measure(run, args.rounds, args.device, rows) for run in args.runs}
    load_after = os.getloadavg()
    machine = torch.cuda.get_device_name() if args.device == "cuda" else cpu_model()
    print(f"{machine}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"load {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print(report(times))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "threads": torch.get_num_threads(), "torch": torch.__version__,
                       "rounds": args.rounds, "load": [load_before, load_after], "seconds": times}, f, indent=1)


if __name__ == "__main__":
    main()
