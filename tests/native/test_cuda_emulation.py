"""The CUDA emulation itself (tests/cuda_emulation.py): it runs a correct shared-memory kernel
under every seed and fails the kernels of tests/native/emulated/selftest.cpp, each with a
planted bug (a missing barrier, out-of-bounds global and shared writes, a failed device
assertion). The op kernels' emulated runs are in tests/ops/test_<op>.py."""
import pytest
import torch

from cuda_emulation import SEEDS, run

pytestmark = pytest.mark.usefixtures("single_thread")


def test_emulation_runs_a_correct_shared_memory_kernel_under_every_seed(emulated, generator):
    input = torch.randn(4 * 64, generator=generator)
    expected = input.view(4, 64).roll(-1, dims=1).flatten()
    for seed in SEEDS:
        assert torch.equal(run(emulated, "selftest_rotate", input, True, seed=seed), expected)


def test_emulation_exposes_a_missing_barrier(emulated, generator):
    """Without the barrier some thread reads the tile before its neighbour wrote it."""
    input = torch.randn(4 * 64, generator=generator)
    expected = input.view(4, 64).roll(-1, dims=1).flatten()
    results = [run(emulated, "selftest_rotate", input, False, seed=seed) for seed in SEEDS]
    assert not any(torch.equal(result, expected) for result in results)


def test_emulation_reports_out_of_bounds_global_write(emulated):
    with pytest.raises(RuntimeError, match=r"overrun_kernel.*0 bytes past the end of a 2000-byte buffer"):
        run(emulated, "selftest_overrun", torch.zeros(500))


def test_emulation_reports_out_of_bounds_shared_write(emulated):
    with pytest.raises(RuntimeError, match=r"shared_overrun_kernel.*past the end of a 256-byte buffer.*thread \(63"):
        run(emulated, "selftest_shared_overrun", torch.zeros(64))


def test_emulation_reports_failed_device_assertion(emulated):
    input = torch.ones(64)
    input[17] = -1
    with pytest.raises(RuntimeError, match=r"assert_kernel.*a negative input.*thread \(17, 0, 0\)"):
        run(emulated, "selftest_check_nonnegative", input)
    run(emulated, "selftest_check_nonnegative", torch.ones(64))  # and passes a valid input
