"""benchmarks/gpu_ceilings.py measures a copy bandwidth and matrix rates a GPU can have: positive,
and under what no current GPU reaches (a wrong byte or FLOP count would land far off)."""
import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.cuda
def test_ceilings_are_plausible(capsys):
    spec = importlib.util.spec_from_file_location("gpu_ceilings", os.path.join(ROOT, "benchmarks", "gpu_ceilings.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
    out = capsys.readouterr().out
    copy = float(re.search(r"copy ([\d.]+) TB/s", out).group(1))
    rates = [float(rate) for rate in re.findall(r"matrix product \d+\^3: (\d+) TFLOP/s", out)]
    assert 0.05 < copy < 20
    assert len(rates) == 2 and all(1 < rate < 5000 for rate in rates)
