"""What bf16 gains on this CPU: the default run's training step and inference with
``solver.amp=bf16`` against ``solver.amp=off`` (fp32), and against fp32 laid out NCHW, timed in
turns in one process, at each thread count asked for.

    python benchmarks/amp_speedup.py [--rounds 15] [--warmup 3] [--threads 1 2] [--json PATH] [--split]
                                     [--image-size H W]

Issue 22's goal: on a CPU with AMX, bf16 at least 2.5x faster than fp32, for the step and for
inference. The work is ``default_run``'s (the default preset, 4 images at 256x320); the models
have the same weights and see the same batch. ``fp32`` is the package's own fp32, channels_last
as ``solver.amp`` lays out every CPU run; ``fp32 NCHW`` is fp32 as it ran before that (and as the
issue measured its baseline). The process runs as the default run's does: sfpn's OpenMP wait
policy and its malloc tuning (large freed blocks kept for reuse, ``sfpn._memory``).

Each round times every row once, the order rotating between rounds, and a round's ratio pairs
timings seconds apart, so a drift of the machine's speed cancels. The table gives each row's
median and each ratio's median and range over rounds.

``--split`` adds, per run and thread count, one profiled call of each row (torch.profiler self
times): the matrix work that AMX speeds up (convolutions and matrix products) against everything
else, and everything else's largest ops. The ratio is bounded by that split: with the matrix work
x times faster in bf16 and the rest r times, fp32 / bf16 is (M + R) / (M / x + R / r).

``--image-size`` times the same work on smaller or larger images: the part of a call that does
not shrink with the image (the RoI heads' 512 RoIs, the weights' casts and the optimizer, each
op's fixed cost) shows at a small size, and the difference of two sizes' times is the part that
grows with the image.
"""
import argparse
import json
import os
import statistics
import sys
import time

# sfpn before torch, as in ``python -m sfpn.train``: it sets the OpenMP wait policy the default run
# uses (sfpn/_threads.py), which the OpenMP runtime reads once, when torch loads it.
import sfpn  # noqa: F401
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from default_run import HEIGHT, MAX_BOX, WIDTH, inference, training_step  # noqa: E402
from sfpn._memory import describe as describe_memory, keep_freed_memory  # noqa: E402
from sfpn.engine.precision import cpu_model, cpu_native_bf16  # noqa: E402

#: row -> (solver.amp, channels_last: None for the layout solver.amp gives).
ROWS = {"fp32 NCHW": ("off", False), "fp32": ("off", None), "bf16": ("bf16", None)}
#: The speed-ups reported, (slower row, faster row).
RATIOS = (("fp32", "bf16"), ("fp32 NCHW", "bf16"))
RUNS = {"step": training_step, "infer": inference}
#: The ops whose self time is the matrix work (oneDNN's convolutions, with their fused sum and ReLU
#: at inference, ATen's 1x1 convolutions in fp32, the fully connected layers); ``--split`` sets it
#: against the rest.
MATRIX_OPS = frozenset({"aten::mkldnn_convolution", "mkldnn::_convolution_pointwise", "aten::convolution_backward",
                        "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "aten::mm", "aten::addmm",
                        "aten::bmm"})


def measure(run: str, rounds: int, warmup: int, size: tuple[int, int] = (HEIGHT, WIDTH)) -> dict[str, list[float]]:
    """Seconds per round of ``run`` ("step" or "infer") on images of ``size`` ``(H, W)`` for each
    of :data:`ROWS`."""
    calls = {row: RUNS[run](amp=amp, channels_last=layout, size=size) for row, (amp, layout) in ROWS.items()}
    names = list(ROWS)
    times: dict[str, list[float]] = {row: [] for row in names}
    for r in range(warmup + rounds):
        for row in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            calls[row]()
            if r >= warmup:
                times[row].append(time.perf_counter() - start)
    return times


def split(run: str, warmup: int, size: tuple[int, int] = (HEIGHT, WIDTH), top: int = 8) -> str:
    """Markdown: per row of :data:`ROWS` but fp32 NCHW, the self time (ms) of one profiled call of
    ``run`` on images of ``size`` after ``warmup`` calls, split into :data:`MATRIX_OPS` and the
    rest, then the rest's ``top`` largest ops by their bf16 time."""
    from torch.profiler import ProfilerActivity, profile

    rows = [row for row in ROWS if row != "fp32 NCHW"]
    self_ms: dict[str, dict[str, float]] = {}
    for row in rows:
        call = RUNS[run](amp=ROWS[row][0], channels_last=ROWS[row][1], size=size)
        for _ in range(max(1, warmup)):
            call()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
        self_ms[row] = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}

    def total(row, keep):
        return sum(ms for op, ms in self_ms[row].items() if keep(op))

    lines = [f"| {run}: self time (ms) | " + " | ".join(rows) + " | ratio |", "| --- | " + "---: | " * (len(rows) + 1)]
    groups = [("all", lambda op: True), ("matrix work", lambda op: op in MATRIX_OPS),
              ("everything else", lambda op: op not in MATRIX_OPS)]
    largest = sorted((op for op in self_ms[rows[-1]] if op not in MATRIX_OPS), key=lambda op: -self_ms[rows[-1]][op])
    groups += [(f"- `{op}`", lambda o, op=op: o == op) for op in largest[:top]]
    for name, keep in groups:
        cells = [total(row, keep) for row in rows]
        ratio = f"{cells[0] / cells[-1]:.2f}x" if cells[-1] > 0 else ""
        lines.append(f"| {name} | " + " | ".join(f"{ms:.1f}" for ms in cells) + f" | {ratio} |")
    return "\n".join(lines)


def report(times: dict[int, dict[str, dict[str, list[float]]]]) -> str:
    """Markdown, one line per thread count and run: each row's median (ms), then each ratio's
    paired median and range."""
    lines = ["| threads | run | " + " | ".join(f"{row} (ms)" for row in ROWS) + " | "
             + " | ".join(f"{slow} / {fast}, paired (range)" for slow, fast in RATIOS) + " |",
             "| ---: | --- | " + "---: | " * (len(ROWS) + len(RATIOS))]
    for threads, runs in times.items():
        for run, rows in runs.items():
            cells = [f"{statistics.median(rows[row]) * 1e3:.1f}" for row in ROWS]
            for slow, fast in RATIOS:
                ratios = [s / f for s, f in zip(rows[slow], rows[fast])]
                cells.append(f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f})")
            lines.append(f"| {threads} | {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, torch.get_num_threads()}))
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--split", action="store_true",
                        help="also profile one call of each row: matrix work against the rest (fp32 and bf16)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[HEIGHT, WIDTH], metavar=("H", "W"),
                        help=f"the batch's image size (default {HEIGHT} {WIDTH}, the default run's; at least {MAX_BOX})")
    args = parser.parse_args()
    if args.rounds < 1 or args.warmup < 0:
        parser.error(f"--rounds must be at least 1 and --warmup at least 0, got {args.rounds} and {args.warmup}")
    if any(t < 1 for t in args.threads):
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if min(args.image_size) < MAX_BOX:
        parser.error(f"--image-size must be at least {MAX_BOX} on each side (the batch's boxes are up to {MAX_BOX} "
                     f"pixels wide), got {args.image_size}")
    size = tuple(args.image_size)
    keep_freed_memory()  # malloc as the default run's process has it (sfpn/_memory.py)
    load_before = os.getloadavg()
    times = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        times[threads] = {run: measure(run, args.rounds, args.warmup, size) for run in args.runs}
    load_after = os.getloadavg()
    machine = cpu_model()
    native = cpu_native_bf16()[1]
    print(f"{machine}; {native}; torch {torch.__version__}; malloc: {describe_memory()}; images {size[0]}x{size[1]}; "
          f"load {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print(report(times))
    for threads in args.threads if args.split else ():
        torch.set_num_threads(threads)
        for run in args.runs:
            print(f"\n{threads} thread(s)\n\n{split(run, args.warmup, size)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "bf16": native, "torch": torch.__version__, "malloc": describe_memory(),
                       "image_size": size, "rounds": args.rounds, "warmup": args.warmup,
                       "load": [load_before, load_after], "seconds": times}, f, indent=1)


if __name__ == "__main__":
    main()
