"""benchmarks/amp_speedup.py: the rows take turns going first, and a speed-up is the median of
the ratios paired by round."""
import importlib.util
import os
import sys

import torch

_BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, _BENCHMARKS)  # amp_speedup imports default_run beside it
_SPEC = importlib.util.spec_from_file_location("benchmarks_amp_speedup", os.path.join(_BENCHMARKS, "amp_speedup.py"))
amp_speedup = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(amp_speedup)
import default_run  # noqa: E402


def test_rows_take_turns_going_first(monkeypatch):
    calls = []
    monkeypatch.setitem(amp_speedup.RUNS, "step",
                        lambda amp, channels_last, size: (lambda: calls.append((amp, channels_last))))
    times = amp_speedup.measure("step", rounds=3, warmup=1)
    nchw, fp32, bf16 = ("off", False), ("off", None), ("bf16", None)
    assert calls == [nchw, fp32, bf16, fp32, bf16, nchw, bf16, nchw, fp32, nchw, fp32, bf16]
    assert {row: len(t) for row, t in times.items()} == {"fp32 NCHW": 3, "fp32": 3, "bf16": 3}  # no warm-up kept


def test_speedup_is_the_median_of_paired_ratios():
    # Paired: 4/1, 3/3, 6/2 -> 4, 1, 3: median 3.0; the medians' ratio would be 4 / 2 = 2.
    times = {2: {"step": {"fp32 NCHW": [8.0, 6.0, 12.0], "fp32": [4.0, 3.0, 6.0], "bf16": [1.0, 3.0, 2.0]}}}
    row = amp_speedup.report(times).splitlines()[-1]
    assert [cell.strip() for cell in row.strip("|").split("|")] == [
        "2", "step", "8000.0", "4000.0", "2000.0", "**3.00x** (1.00-4.00)", "**6.00x** (2.00-8.00)"]


def test_the_default_runs_closures_compute_the_same_work_in_both_precisions():
    fp32, nchw, bf16 = (amp_speedup.RUNS["step"](amp=amp, channels_last=layout)()
                        for amp, layout in (("off", None), ("off", False), ("bf16", None)))
    # The same weights and batch: the first losses differ by the layout's summation order and by
    # bf16's rounding only.
    assert abs(fp32 - nchw) <= 1e-4 * abs(fp32)
    assert abs(fp32 - bf16) <= 0.05 * abs(fp32)
    infer = amp_speedup.RUNS["infer"](amp="off", channels_last=None)
    detections = infer()
    assert len(detections) == default_run.IMAGES
    assert all(torch.isfinite(d["boxes"]).all() for d in detections)


def test_the_image_size_reaches_every_rows_batch(monkeypatch):
    sizes = []
    monkeypatch.setitem(amp_speedup.RUNS, "step",
                        lambda amp, channels_last, size: sizes.append(size) or (lambda: None))
    amp_speedup.measure("step", rounds=1, warmup=0, size=(64, 96))
    assert sizes == [(64, 96)] * len(amp_speedup.ROWS)
    _, _, images, targets = default_run._model_and_batch("off", size=(64, 96))
    assert [image.shape for image in images] == [(3, 64, 96)] * default_run.IMAGES
    for target in targets:
        assert target["semantic"].shape == (64, 96)
        assert (target["boxes"] >= 0).all() and (target["boxes"][:, 2] <= 96).all() and (target["boxes"][:, 3] <= 64).all()
