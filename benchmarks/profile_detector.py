"""Where SFPN's extra time goes, against its FPN twin: torch.profiler on the CPU or a GPU, for
inference and for a training step (forward + backward of the losses, no optimizer step).

    python benchmarks/profile_detector.py [--model small|r50] [--arch faster_rcnn] [--size 320 320]
        [--modes inference training] [--rounds 5] [--threads 1] [--amp off|bf16]
        [--device cpu|cuda] [--references OP ...]

Prints, per mode, two tables of milliseconds per call (the median over ``--rounds`` profiled
calls after two warm-up calls, FPN and SFPN in turns): the process CPU time of each stage (the
detector's modules and functions, inclusive; ``backward`` is everything autograd runs), FPN
against SFPN; then the ops whose self time in the profiler (wall time) grows the most from FPN
to SFPN. The detectors (random weights) run on a batch of two random images, as in
benchmarks/bench_detector.py: by default the ``<arch>_r18_{fpn,sfpn}_small`` presets with 4
classes and 4 boxes per image (its ``step-small``), with ``--model r50`` the ``_r50_*_1x`` ones
with 80 classes and 20 boxes. ``--amp bf16`` runs both as ``solver.amp=bf16`` trains and
evaluates (bf16 autocast, channels_last weights and images: ``sfpn.engine.precision``). On a
shared machine use ``--threads 1`` and read the FPN/SFPN ratios, not the absolute times.

With ``--device cuda`` the stages' CPU times are the host's share (launches, Python), the op table
ranks the ops' own GPU time (the kernels each launches), and a first row gives each detector's
wall time per call, synchronised, from an unprofiled call in each round. ``--references OP ...``
serves those sfpn ops (``sfpn.ops._library.OPS``) by their pure-PyTorch references in both
detectors: the price of a kernel inside the detector, against the eager composition it replaces.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sfpn  # noqa: E402
from sfpn.engine.precision import choose_precision, prepare_model  # noqa: E402
from sfpn.modeling import InferenceWeightCache  # noqa: E402
from sfpn.ops import _library  # noqa: E402
from bench_detector import _batch  # noqa: E402

#: The detector's modules timed as stages (inclusive of what they call), by attribute path.
STAGES = ("backbone", "neck", "neck.semantic_head", "rpn", "roi_heads")
#: Functions timed as stages: (module, attribute), patched to run inside a range of that name.
FUNCTIONS = (("sfpn.modeling.detector", "upsample_argmax"), ("sfpn.modeling.detector", "semantic_labels"),
             ("sfpn.modeling.neck", "semantic_fuse"), ("sfpn.modeling.neck", "upsample_add"),
             ("sfpn.modeling.semantic_head", "SemanticHead.loss"), ("sfpn.ops", "resize_sum"),
             ("sfpn.ops", "group_norm_relu"), ("sfpn.ops", "upsample_cross_entropy"))


class Stages:
    """Times named stages of a call: the process CPU time spent inside each (all threads; unlike
    wall time it does not count the time the process waits for a core, so it holds on a loaded
    machine), and each is a profiler range of that name too."""

    def __init__(self):
        self.cpu_ms = collections.Counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.process_time()
        with record_function(name):
            yield
        self.cpu_ms[name] += (time.process_time() - start) * 1e3


@contextlib.contextmanager
def staged(model, stages: Stages):
    """Runs every stage of ``model`` (STAGES, FUNCTIONS) inside ``stages(name)``."""
    handles, patches = [], []
    for path in STAGES:
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if module is None:
            continue
        open_stages = []

        def enter(module, args, _name=path, _open=open_stages):
            _open.append(stages(_name))
            _open[-1].__enter__()

        def leave(module, args, output, _open=open_stages):
            _open.pop().__exit__(None, None, None)  # returns None: a hook's result would replace the output

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    for module_name, attribute in FUNCTIONS:
        owner, name = sys.modules[module_name], attribute
        if "." in attribute:  # a method: patched on its class
            class_name, name = attribute.split(".")
            owner = getattr(owner, class_name)
        function = getattr(owner, name)

        def timed(*args, _function=function, _name=attribute, **kwargs):
            with stages(_name):
                return _function(*args, **kwargs)

        setattr(owner, name, timed)
        patches.append((owner, name, function))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for owner, name, function in patches:
            setattr(owner, name, function)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_ms(step, device: torch.device) -> float:
    """The wall time of one unprofiled call of ``step``, its GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    step(Stages())
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def profiled(model, step, device: torch.device) -> tuple[dict, dict]:
    """(stage -> CPU ms, op -> profiler self ms) of one call of ``step``: on a GPU, an op's self
    time is that of the kernels it launched."""
    stages = Stages()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with staged(model, stages), profile(activities=activities) as profiler:
        with stages("call"):
            step(stages)
        synchronize(device)
    ops = collections.Counter()
    names = {"call", "backward", *STAGES, *(name for _, name in FUNCTIONS)}
    for event in profiler.key_averages():
        if event.key not in names:
            self_us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
            ops[event.key] += self_us / 1e3
    return dict(stages.cpu_ms), ops


def medians(calls: list[dict]) -> dict:
    """Per key, the median over the calls (0 in a call without it)."""
    return {key: statistics.median(call.get(key, 0.0) for call in calls) for key in set().union(*calls)}


#: ``--model`` -> (preset name with ``{arch}`` and ``{neck}``, classes, boxes per image).
MODELS = {"small": ("{arch}_r18_{neck}_small", 4, 4), "r50": ("{arch}_r50_{neck}_1x", 80, 20)}


def steps(model_name: str, arch: str, neck: str, height: int, width: int, amp: str, device: torch.device):
    """(model, inference step, training step) of ``--model`` with ``neck`` in ``amp``'s precision
    on ``device``; a step takes the :class:`Stages` that time it."""
    preset, num_classes, boxes = MODELS[model_name]
    torch.manual_seed(0)
    precision = choose_precision(amp, device)
    model = sfpn.build_detector(preset.format(arch=arch, neck=neck), num_classes).to(device)
    model = prepare_model(model, precision)
    images, targets = _batch(height, width, num_classes, boxes, device.type)

    cache = InferenceWeightCache()  # shared by the calls, as the evaluation loop shares one

    @torch.no_grad()
    def infer(stages: Stages):  # noqa: ARG001 (the model's own stages are timed by hooks)
        model.eval()
        with precision.autocast(device.type), cache:
            model(images)

    def train(stages: Stages):
        model.train()
        with precision.autocast(device.type):
            losses = model(images, targets)
        with stages("backward"):
            sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)

    return model, infer, train


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small", choices=list(MODELS),
                        help="small: the <arch>_r18_*_small presets, 4 classes; r50: <arch>_r50_*_1x, 80 classes")
    parser.add_argument("--arch", default="faster_rcnn", choices=["faster_rcnn", "mask_rcnn", "cascade_rcnn"])
    parser.add_argument("--size", type=int, nargs=2, default=(320, 320), metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--modes", nargs="+", default=["inference", "training"], choices=["inference", "training"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--top", type=int, default=12, help="ops listed per mode")
    parser.add_argument("--amp", default="off", choices=["off", "bf16"], help="precision, as solver.amp (default fp32)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--references", nargs="+", default=[], metavar="OP",
                        help="sfpn ops served by their pure-PyTorch references in both detectors")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    height, width = args.size
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} CPU thread(s)"
    print(f"{MODELS[args.model][0].format(arch=args.arch, neck='*')}, batch 2 at {height}x{width}, {where}, "
          f"{'bf16 autocast + channels_last' if args.amp == 'bf16' else 'fp32'}, "
          f"{'references for ' + ', '.join(args.references) if args.references else 'sfpn kernels'}, "
          f"load average {os.getloadavg()[0]:.1f}, ms per call (median of {args.rounds})")
    served = _library.references(args.references) if args.references else contextlib.nullcontext()
    with served:
        for mode in args.modes:
            report(mode, args, device, height, width)


def report(mode: str, args, device: torch.device, height: int, width: int) -> None:
    """Profiles ``mode`` for FPN and SFPN in turns and prints its two tables."""
    detectors = {neck: steps(args.model, args.arch, neck, height, width, args.amp, device) for neck in ("fpn", "sfpn")}
    calls = {neck: [] for neck in detectors}
    walls = {neck: [] for neck in detectors}
    for index in range(2 + args.rounds):  # FPN and SFPN in turns, so that both see the same load
        for neck, (model, infer, train) in detectors.items():
            step = infer if mode == "inference" else train
            if index < 2:
                step(Stages())  # warm-up
                continue
            if device.type == "cuda":
                walls[neck].append(wall_ms(step, device))
            calls[neck].append(profiled(model, step, device))
    (fpn_stages, fpn_ops), (sfpn_stages, sfpn_ops) = (
        (medians([c[0] for c in calls[neck]]), medians([c[1] for c in calls[neck]])) for neck in ("fpn", "sfpn"))
    host = " (host CPU time)" if device.type == "cuda" else ""
    print(f"\n## {mode}\n\n| stage{host} | FPN | SFPN | SFPN - FPN |\n| --- | ---: | ---: | ---: |")
    if device.type == "cuda":
        fpn, ours = statistics.median(walls["fpn"]), statistics.median(walls["sfpn"])
        print(f"| wall, synchronised (unprofiled) | {fpn:.1f} | {ours:.1f} | {ours - fpn:+.1f} |")
    for name in ["call", *STAGES, "backward", *(name for _, name in FUNCTIONS)]:
        if name in fpn_stages or name in sfpn_stages:
            fpn, ours = fpn_stages.get(name, 0.0), sfpn_stages.get(name, 0.0)
            print(f"| {'total' if name == 'call' else name} | {fpn:.1f} | {ours:.1f} | {ours - fpn:+.1f} |")
    print(f"(load average {os.getloadavg()[0]:.1f})")
    extra = {op: sfpn_ops[op] - fpn_ops.get(op, 0.0) for op in sfpn_ops}
    kind = "GPU self time" if device.type == "cuda" else "self time"
    print(f"\n| op ({kind}) | FPN | SFPN | SFPN - FPN |\n| --- | ---: | ---: | ---: |")
    for op in sorted(extra, key=extra.get, reverse=True)[: args.top]:
        print(f"| {short_name(op)} | {fpn_ops.get(op, 0.0):.1f} | {sfpn_ops[op]:.1f} | {extra[op]:+.1f} |")


def short_name(op: str, width: int = 100) -> str:
    """``op`` cut to ``width`` characters: a CUDA kernel's name spells out its template arguments,
    hundreds of characters that would hide the table."""
    return op if len(op) <= width else op[: width - 3] + "..."


if __name__ == "__main__":
    main()
