"""The GPU's two ceilings, measured where the kernels run (docs/design.md section 5 reports
memory-bound ops as a fraction of the measured copy bandwidth; METHOD: measure, don't quote):

    python benchmarks/gpu_ceilings.py

* copy: a device-to-device copy of 1 GiB of float32, bytes read plus bytes written per second;
* bf16 and tf32 matrix products, 8192 x 8192 x 8192, on random data (zeros run faster).
Each is the median of CUDA-event timings (``triton.testing.do_bench``) after a warm-up.
"""
import torch
import triton.testing


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_ceilings.py needs a CUDA device")
    generator = torch.Generator(device="cuda").manual_seed(0)
    source = torch.rand(2**28, device="cuda", generator=generator)  # 1 GiB
    target = torch.empty_like(source)
    copy_ms = triton.testing.do_bench(lambda: target.copy_(source), return_mode="median")
    print(f"{torch.cuda.get_device_name()}: copy {2 * source.numel() * 4 / copy_ms / 1e9:.2f} TB/s "
          f"(1 GiB read + 1 GiB written in {copy_ms:.3f} ms)")
    del source, target
    n = 8192
    for name, dtype, tf32 in (("bf16", torch.bfloat16, False), ("tf32", torch.float32, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device="cuda", generator=generator).to(dtype)
        b = torch.randn(n, n, device="cuda", generator=generator).to(dtype)
        ms = triton.testing.do_bench(lambda: a @ b, return_mode="median")
        print(f"{name} matrix product {n}^3: {2 * n**3 / ms / 1e9:.0f} TFLOP/s ({ms:.3f} ms)")


if __name__ == "__main__":
    main()
