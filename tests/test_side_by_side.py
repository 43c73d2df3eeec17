"""benchmarks/side_by_side.py: each goal is read as a ratio paired within a round, against its bound."""
import importlib.util
import os
import sys

_BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, _BENCHMARKS)  # side_by_side imports bench_detector beside it
_SPEC = importlib.util.spec_from_file_location("benchmarks_side_by_side", os.path.join(_BENCHMARKS, "side_by_side.py"))
side_by_side = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(side_by_side)


def _goal_rows(report: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split(" | ") for line in report.splitlines()
            if line.startswith("| ") and not line.startswith("| ---") and "ratio" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows if len(cells) == 5}


def test_goals_use_ratios_paired_by_round():
    rows = side_by_side.with_bf16(side_by_side.INFERENCE_DETECTORS)
    times = {run: {impl: [1.0, 1.0, 1.0] for impl in rows} for run in ("step", "infer")}
    # Paired, torchvision takes 2x, 2x, 1x SFPN's time: median 2.0 (the medians' ratio would be 3 / 3 = 1).
    times["step"]["torchvision"] = [10.0, 2.0, 3.0]
    times["step"]["sfpn"] = [5.0, 1.0, 3.0]
    # SFPN over our FPN: 1.1, 1.3, 1.25 -> 1.25, above the 1.2 bound; the bf16 twin 1.2 exactly: met.
    times["infer"]["sfpn"] = [1.1, 1.3, 1.25]
    times["infer"]["sfpn-bf16"] = [1.2, 1.2, 1.2]
    goals = _goal_rows(side_by_side.report(times))
    assert goals["sfpn step >= 1.4x torchvision's speed"] == ["torchvision / sfpn", "2.00", "1.00-2.00", "yes"]
    assert goals["sfpn inference <= 1.2x our FPN's time"] == ["sfpn / fpn", "1.25", "1.10-1.30", "no"]
    assert goals["sfpn-bf16 inference <= 1.2x our FPN's time"][-1] == "yes"
    # Equal times: not faster than torchvision (strictly), and 1.0x is short of 1.4x.
    assert goals["sfpn-head128 inference faster than torchvision's"] == ["torchvision / sfpn-head128", "1.00", "1.00-1.00", "no"]
    assert goals["sfpn-head128-bf16 step >= 1.4x torchvision's speed"][-1] == "no"
    assert len(goals) == len(side_by_side.GOALS) == 12


def test_a_run_not_measured_has_no_goal_rows():
    rows = side_by_side.with_bf16(side_by_side.INFERENCE_DETECTORS)
    goals = _goal_rows(side_by_side.report({"infer": {impl: [1.0] for impl in rows}}))
    assert goals and not any("step" in goal for goal in goals)


def test_a_goal_is_read_only_when_both_its_rows_were_timed():
    times = {"step": {"sfpn-bf16": [1.0, 1.2], "torchvision-bf16": [1.5, 1.5]}, "infer": {"sfpn-bf16": [1.0]}}
    goals = _goal_rows(side_by_side.report(times))
    assert goals == {"sfpn-bf16 step >= 1.4x torchvision's speed": ["torchvision-bf16 / sfpn-bf16", "1.38", "1.25-1.50", "no"]}
