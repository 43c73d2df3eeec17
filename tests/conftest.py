import os

import pytest
import torch

# The Triton kernels run on the CPU under Triton's interpreter when no GPU is visible. Triton reads
# this when a kernel is decorated, so it must be set before sfpn.kernels is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture
def generator():
    """A fresh random generator per test; its seed is printed so a failure can be replayed."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"random seed: {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of small-shape tests: on tiny tensors threads only add
    OpenMP overhead (a lot of it on a loaded machine). Opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def device():
    """Where the Triton kernel tests run: CUDA when present, else the CPU with the Triton kernels
    opted in (run by the interpreter)."""
    from sfpn import kernels

    if torch.cuda.is_available():
        yield torch.device("cuda")
    else:
        with kernels.interpret_on_cpu():
            yield torch.device("cpu")
