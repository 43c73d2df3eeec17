import hashlib
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# The Triton kernels run on the CPU under Triton's interpreter when no GPU is visible. Triton reads
# this when a kernel is decorated, so it must be set before sfpn.kernels is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Hypothesis profiles, chosen with `--hypothesis-profile NAME` (hypothesis' pytest option). "ci",
# the default, keeps the property tests (test_*drawn_inputs* in tests/ops/) to about two minutes on two
# cores; "long" is for a thorough local run. Tests scale max_examples by their cost. No deadline:
# timings on a shared CI machine vary too much for one, and the first call of a kernel compiles.
_PROFILE_DEFAULTS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=100, **_PROFILE_DEFAULTS)
settings.register_profile("long", max_examples=1000, **_PROFILE_DEFAULTS)
settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


def pytest_addoption(parser):
    parser.addoption(
        "--seed", type=int, default=0,
        help="base of the random seeds: each test's seed is derived from it and the test's node id, so a "
             "failure replays exactly with the same --seed (default 0)",
    )


def pytest_report_header(config):
    return f"random seeds: --seed {config.getoption('--seed')} (each test's seed is derived from it and its node id)"


def test_seed(base: int, nodeid: str) -> int:
    """A test's seed: a hash of the run's ``--seed`` and the test's node id (stable across runs and
    test selections, different between tests)."""
    return int.from_bytes(hashlib.sha256(f"{base}/{nodeid}".encode()).digest()[:4], "little")


test_seed.__test__ = False  # a helper, not a test


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and "generator" in getattr(item, "fixturenames", ()):
        base = item.config.getoption("--seed")
        report.sections.append(
            ("random seed", f"generator seed {test_seed(base, item.nodeid)}; replay with: pytest '{item.nodeid}' --seed {base}")
        )
    return report


@pytest.fixture
def generator(request):
    """A random generator seeded for this test from ``--seed`` and its node id; a failure report
    names the seed and the command that replays it."""
    return torch.Generator().manual_seed(test_seed(request.config.getoption("--seed"), request.node.nodeid))


@pytest.fixture
def single_thread():
    """One intra-op thread for a small-shape test: on tiny tensors threads only add OpenMP
    overhead (a lot of it on a loaded machine). Opt in with
    ``@pytest.mark.usefixtures("single_thread")``, or for a module with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def without_winograd(monkeypatch):
    """sfpn.modeling.layers without Winograd's convolutions, as under ``SFPN_WINOGRAD=0``: for the
    tests of the oneDNN calls and of ATen's bits, which the float32 3x3 convolutions of stride 1
    would otherwise leave for Winograd's (tests/modeling/test_winograd_layers.py tests those)."""
    from sfpn.modeling import layers

    monkeypatch.setattr(layers, "_winograd_available", lambda: False)


@pytest.fixture
def device():
    """Where the Triton kernel tests run: CUDA when present, else the CPU with the Triton kernels
    registered for CPU tensors for the test (``interpret_on_cpu``; run by the interpreter)."""
    from sfpn import kernels

    if torch.cuda.is_available():
        yield torch.device("cuda")
    else:
        with kernels.interpret_on_cpu():
            yield torch.device("cpu")


@pytest.fixture(scope="session")
def emulated():
    """The CUDA kernels compiled for the CPU (tests/cuda_emulation.py), as torch.ops.sfpn_emulated:
    built once per session."""
    from cuda_emulation import load

    return load()
