"""The divergence guard: a non-finite or exploding loss stops training."""
import json
import math

import pytest
import torch

from sfpn.data import ShapesSpec, synthetic_dataset
from sfpn.engine.checkpoint import load_checkpoint
from sfpn.engine.trainer import DivergenceGuard

pytestmark = pytest.mark.usefixtures("single_thread")


def test_non_finite_losses_always_diverge():
    for window in (3, 0):
        guard = DivergenceGuard(100.0, window)
        assert guard.check(2.5) is None
        assert guard.check(float("nan")) == "non-finite loss nan"
        assert guard.check(float("inf")) == "non-finite loss inf"
    off = DivergenceGuard(100.0, window=0)  # no early losses: the ratio test is off
    assert off.check(1e-3) is None and off.check(1e30) is None and off.early_losses == []


def test_ratio_to_the_running_median_of_early_losses():
    guard = DivergenceGuard(100.0, window=3)
    assert guard.check(4.0) is None
    assert guard.check(2.0) is None  # median so far: 3
    assert guard.check(299.0) is None  # under 100 x 3; joins the window (median now 4)
    assert guard.early_losses == [4.0, 2.0, 299.0]
    assert guard.check(0.5) is None  # the window is full: the reference stays 4
    assert guard.early_losses == [4.0, 2.0, 299.0]
    assert guard.check(400.0) is None
    reason = guard.check(400.5)
    assert reason == "loss 400.5 is over 100x the median 4 of the first 3 iterations"


@pytest.mark.parametrize("factor, window, message", [(1.0, 5, "divergence_factor"), (0.0, 5, "divergence_factor"), (10.0, -1, "divergence_window")])
def test_guard_settings_are_checked(factor, window, message):
    with pytest.raises(ValueError, match=message):
        DivergenceGuard(factor, window)


def test_exploding_run_stops_with_one_line(tmp_path, capsys):
    """On main, ``--set solver.lr=1e6`` logged a loss of 2e22 and trained on."""
    from sfpn import train

    splits = synthetic_dataset(ShapesSpec(seed=1, num_train=4, num_val=2), root=str(tmp_path / "data"), progress=False)
    output = tmp_path / "run"
    args = [
        "--data-root", splits["train"].image_root, "--ann-file", splits["train"].ann_file,
        "--val-data-root", splits["val"].image_root, "--val-ann-file", splits["val"].ann_file,
        "--set", "data.min_size=64", "--set", "data.max_size=96", "--set", "data.test_min_size=64",
        "--set", "data.num_workers=0", "--set", "log_every=1", "--set", "solver.lr=1e6",
        "--iters", "6", "--batch-size", "2", "--checkpoint-every", "1", "--output-dir", str(output), "--no-progress",
    ]
    with pytest.raises(SystemExit) as stopped:
        train.main(args)
    message = str(stopped.value.code)
    assert "\n" not in message
    assert message.startswith("error: training diverged at iteration 2: loss ")
    for term in ("loss_rpn_cls=", "loss_rpn_loc=", "loss_cls=", "loss_box_reg=", "loss_segm="):
        assert term in message
    assert f"last good checkpoint: {output / 'model_0000001.pth'}" in message
    # The diverged iteration left no trace: no log record, no update to a saved checkpoint.
    records = [json.loads(line) for line in open(output / "metrics.jsonl")]
    assert [r["iter"] for r in records] == [1]
    state = load_checkpoint(str(output))
    assert state["path"] == str(output / "model_0000001.pth")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # The guard's reference travels with the checkpoint, for a resumed run.
    assert len(state["early_losses"]) == 1 and math.isclose(state["early_losses"][0], records[0]["loss"], rel_tol=1e-6)
