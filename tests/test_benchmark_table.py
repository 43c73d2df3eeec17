"""benchmarks/table.py: ours against each peer, the reference of a group without ours, skips."""
import importlib.util
import os

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "table.py")
_SPEC = importlib.util.spec_from_file_location("benchmarks_table", _PATH)
table = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(table)


def _bench(group, impl, median_s, **extra_info):
    return {"group": group, "name": f"test_x[{impl}]", "params": {"impl": impl}, "stats": {"median": median_s}, "extra_info": extra_info}


def test_ratios_are_each_peer_over_ours():
    data = {
        "benchmarks": [
            _bench("op", "sfpn", 0.010),
            _bench("op", "eager", 0.040),
            _bench("op", "compiled", 0.005),
            _bench("step", "alone", 2.0, reference=True),
            _bench("step", "shared", 5.0),
            _bench("lonely", "eager", 1.0),
        ],
        "machine_info": {"cpu": {"brand_raw": "CPU X"}, "cpu_count": 2, "load_average_start": [1.5, 0, 0], "load_average_end": [2.5, 0, 0]},
        "skipped": {"needs a CUDA device": ["a", "b"]},
    }
    lines = table.table(data, "sfpn").splitlines()
    assert "CPU X, 2 CPUs" in lines[0] and "load average 1.5 at start, 2.5 at end" in lines[0]
    assert "| op | 10.000 | eager | 40.000 | 4.00x |" in lines
    assert "| op | 10.000 | compiled | 5.000 | 0.50x |" in lines
    assert "| step | alone: 2000.000 | shared | 5000.000 | 2.50x |" in lines
    assert "| lonely | - | eager | 1000.000 |  |" in lines
    assert lines[-1] == "skipped 2: needs a CUDA device"


def test_machine_line_names_the_cpu_model_its_bf16_and_the_gpu():
    data = {"benchmarks": [], "machine_info": {
        "cpu": {"brand_raw": "AMD EPYC"}, "cpu_model": "AMD EPYC 9B45 (family 26, model 2)", "cpu_count": 2,
        "cpu_bf16": "the CPU has AVX512-BF16 (bf16 dot products): native bf16", "gpu": "NVIDIA H200"}}
    line = table.table(data, "sfpn").splitlines()[0]
    assert line.startswith("machine: AMD EPYC 9B45 (family 26, model 2), 2 CPUs; bf16: the CPU has AVX512-BF16")
    assert "; GPU NVIDIA H200;" in line
