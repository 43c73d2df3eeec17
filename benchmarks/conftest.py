"""What ``pytest benchmarks/ --benchmark-only`` does beyond pytest-benchmark's defaults.

* It writes the results to ``benchmarks/results/latest.json`` (``--benchmark-json PATH`` to choose)
  with the CPU model (and whether it computes bf16 natively), the GPU, the machine's load average
  and thread settings, and the skipped benchmarks with why.
* It ends with one table, ours against each peer (``benchmarks/table.py`` of that file), in place
  of pytest-benchmark's table per group (``--benchmark-verbose`` brings those back).
* Without a GPU it skips the benchmarks that take minutes on a small CPU (LONG_ON_CPU below), so
  the default CPU run takes a few minutes; ``--full`` runs them too.

The root conftest.py has already set OpenMP's passive wait policy (sfpn/_threads.py) by the time
this file imports torch.
"""
import os
import pathlib

import pytest
import torch

import table

DEFAULT_JSON = pathlib.Path(__file__).parent / "results" / "latest.json"


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", help="also run the benchmarks that take minutes on a CPU (LONG_ON_CPU in benchmarks/conftest.py)")


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own pytest_configure reads the options
def pytest_configure(config):
    if config.getoption("benchmark_json", None) is None:
        config.option.benchmark_json = DEFAULT_JSON
    if not config.getoption("benchmark_verbose", False):
        config.option.benchmark_quiet = True
    config.stash[_LOAD_AT_START] = os.getloadavg()


_LOAD_AT_START = pytest.StashKey[tuple]()
_JSON_WRITTEN = pytest.StashKey[bool]()
#: reason -> node ids of the benchmarks skipped for it, this session (report hooks see no config).
SKIPPED: dict[str, list[str]] = {}


def long_on_cpu(item) -> str | None:
    """Why ``item`` runs only with ``--full`` on a machine without CUDA (None: it runs by default).

    Each of these takes from tens of seconds to minutes on a 2-core CPU; together they made the
    CPU run 13 minutes. The default run keeps a case of every op with a CPU kernel, against its
    peers."""
    callspec = getattr(item, "callspec", None)
    params, name = (callspec.params if callspec else {}), item.originalname
    if params.get("device", "cpu") != "cpu":
        return None
    if name == "test_step_coco_shape":
        return "R50 at 800x1344 takes ~30 s a step on a 2-core CPU"
    if name == "test_inference_coco_shape":
        return "R50 at 800x1344 takes seconds per image on a 2-core CPU"
    if params.get("impl") == "compiled":
        return "torch.compile takes tens of seconds per case on a CPU"
    if params.get("shape") == "100k-80cls":
        return "torchvision takes seconds per call at 100k boxes"
    if name in ("test_roi_align_p2", "test_multilevel") and params.get("case") != "train-7x7":
        return "torchvision takes seconds per call; train-7x7 is the CPU case"
    if item.module.__name__ == "bench_semantic":
        if "num_classes" in params and params["num_classes"] != 81:
            return "K=81 is the CPU case of the semantic ops' C++ kernels"
    return None


def pytest_collection_modifyitems(config, items):
    if config.getoption("full") or torch.cuda.is_available():
        return
    for item in items:
        reason = long_on_cpu(item)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"--full only: {reason}"))


def pytest_runtest_logreport(report):
    if report.skipped and report.when in ("setup", "call"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        SKIPPED.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid)


def pytest_benchmark_update_machine_info(config, machine_info):
    from sfpn.engine.precision import cpu_model, cpu_native_bf16

    machine_info["cpu_model"] = cpu_model()
    machine_info["cpu_bf16"] = cpu_native_bf16()[1]
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name()
    machine_info["load_average_start"] = config.stash[_LOAD_AT_START]
    machine_info["load_average_end"] = os.getloadavg()
    machine_info["cpu_count"] = os.cpu_count()
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["skipped"] = {reason: sorted(ids) for reason, ids in SKIPPED.items()}
    config.stash[_JSON_WRITTEN] = True


@pytest.hookimpl(trylast=True)  # after pytest-benchmark has written the JSON
def pytest_terminal_summary(terminalreporter, config):
    if not config.stash.get(_JSON_WRITTEN, False):  # nothing ran (--collect-only, no benchmark selected)
        return
    path = config.getoption("benchmark_json")
    if not isinstance(path, (str, os.PathLike)):  # --benchmark-json given: pytest-benchmark's open file
        path.flush()
        path = path.name
    terminalreporter.write_sep("=", f"ours against each peer ({os.path.relpath(path)})")
    terminalreporter.write_line(table.table(table.load(path), "sfpn"))
