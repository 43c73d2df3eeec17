"""The precision a run computes in: what ``solver.amp`` chooses on the device at hand, and why.

``solver.amp`` (training, and evaluation of the trained model):

* ``auto``: on CUDA, bf16 autocast where the GPU supports it, else fp16 (with a grad scaler). On
  the CPU, bf16 autocast when the CPU computes bf16 natively (:func:`cpu_native_bf16`), else fp32.
* ``bf16``: bf16 autocast on either device, even on a CPU that emulates bf16 (the reason says
  so: expect it slower than fp32 there).
* ``fp16``: fp16 autocast with a grad scaler; CUDA only.
* ``off``: fp32.

Under autocast the ops keep in fp32 what needs it: the losses (autocast's own fp32 list: cross
entropy, smooth L1, BCE), box decoding (``BoxCoder.decode`` computes in fp32), NMS's IoUs (its
autocast rule casts boxes and scores to fp32) and the semantic cross entropy's accumulation.

On the CPU weights and activations are channels_last in every mode, wherever oneDNN runs the
convolutions (:func:`cpu_channels_last`): oneDNN convolves NHWC activations as they are and
converts NCHW ones at every convolution. Measured: a 3x3 conv 256->256 at 64x84, batch 2, one
thread, forward and backward, 832 ms in fp32 and 135 ms in bf16 with channels_last on an Intel
Xeon with AMX; R50 Faster R-CNN at the COCO shape in fp32, 2 threads, on an AMD EPYC (Zen 5):
inference 1.6x and a training step 1.17x faster channels_last than NCHW (benchmarks/RESULTS.md,
2026-12-03). On CUDA the layout stays as it was.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import platform

import torch

from ..overrides import allowed, check_value
from .config import SolverConfig

#: The values of ``solver.amp``, as its field declares them.
AMP_MODES = allowed(SolverConfig, "amp")
#: CPU flags (Linux ``/proc/cpuinfo`` names) of native bf16 arithmetic, best first, with the
#: words the reason uses for them.
NATIVE_BF16_FLAGS = {
    "amx_bf16": "AMX-BF16 (bf16 matrix tiles)",
    "avx512_bf16": "AVX512-BF16 (bf16 dot products)",
}


@dataclasses.dataclass(frozen=True)
class Precision:
    """What a run computes in on one device: ``dtype`` is the autocast dtype (``torch.float32``:
    no autocast), ``channels_last`` whether weights and activations are channels_last, ``reason``
    why (one line)."""

    dtype: torch.dtype
    channels_last: bool
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype for ``torch.autocast``, or None for fp32."""
        return None if self.dtype == torch.float32 else self.dtype

    def autocast(self, device_type: str):
        """``torch.autocast(device_type, dtype)``, or a no-op context for fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        """e.g. ``"bf16 autocast, channels_last (solver.amp=auto: the CPU has AVX512-BF16 ...)"``."""
        name = {torch.float32: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.dtype]
        return name + (", channels_last" if self.channels_last else "") + f" ({self.reason})"


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of Linux's ``/proc/cpuinfo`` (empty elsewhere)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags as Linux names them in ``/proc/cpuinfo`` (empty where unknown)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """The CPU's model name, with its family and model numbers where Linux gives them (a VM may
    name only the vendor's line, e.g. ``AMD EPYC (family 26, model 2)``)."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']}, model {info['model']})"
    return name


def cpu_native_bf16(flags=None) -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and why (``flags``: the CPU flags to judge, by
    default :func:`cpu_flags`; a test injects its own).

    Native means AMX-BF16 or AVX512-BF16: oneDNN then runs bf16 convolutions and matrix products
    on bf16 instructions. On any other CPU it emulates bf16 through fp32 and conversions, slower
    than fp32, so ``auto`` stays in fp32 there. AVX512-BF16 without AMX pays too: on an AMD EPYC
    (Zen 5) the default run's training step ran 1.84x faster in bf16 with channels_last than in
    fp32 NCHW at one thread (1.74x at two), its inference 1.69x (benchmarks/RESULTS.md, 2026-12-03).
    """
    flags = cpu_flags() if flags is None else frozenset(flags)
    if not flags:
        return False, "the CPU's flags are unknown (no /proc/cpuinfo): fp32"
    if not torch.backends.mkldnn.is_available():
        return False, "this torch is built without oneDNN, which runs CPU bf16: fp32"
    for flag, words in NATIVE_BF16_FLAGS.items():
        if flag in flags:
            return True, f"the CPU has {words}: native bf16"
    return False, "the CPU has neither AMX-BF16 nor AVX512-BF16: bf16 would be emulated, slower than fp32"


def cpu_channels_last() -> bool:
    """Whether CPU runs lay weights and activations out channels_last: where this torch has
    oneDNN (``torch.backends.mkldnn``), whose convolutions read NHWC as it is."""
    return torch.backends.mkldnn.is_available()


def choose_precision(amp: str, device: torch.device | str, flags=None) -> Precision:
    """The precision ``solver.amp = amp`` gives on ``device`` (``flags``: the CPU flags, for tests).

    Raises ``ValueError`` for an unknown mode and for fp16 on the CPU.
    """
    check_value("solver.amp", amp, AMP_MODES)
    device_type = torch.device(device).type
    if amp == "off":
        return Precision(torch.float32, device_type == "cpu" and cpu_channels_last(), "solver.amp=off")
    if device_type == "cuda":
        if amp == "auto":
            supported = torch.cuda.is_bf16_supported()
            dtype = torch.bfloat16 if supported else torch.float16
            return Precision(dtype, False, f"solver.amp=auto: the GPU {'supports' if supported else 'lacks'} bf16")
        return Precision(torch.bfloat16 if amp == "bf16" else torch.float16, False, f"solver.amp={amp}")
    if device_type != "cpu":
        if amp == "auto":
            return Precision(torch.float32, False, f"solver.amp=auto: no mixed precision rule for {device_type}")
        raise ValueError(f"solver.amp={amp}: no mixed precision rule for device type {device_type!r}; use auto or off")
    if amp == "fp16":
        raise ValueError("solver.amp=fp16 needs CUDA; on the CPU use auto, bf16 or off")
    native, why = cpu_native_bf16(flags)
    channels_last = cpu_channels_last()
    if amp == "bf16":
        return Precision(torch.bfloat16, channels_last, "solver.amp=bf16" + ("" if native else f", although {why}"))
    return Precision(torch.bfloat16 if native else torch.float32, channels_last, f"solver.amp=auto: {why}")


def prepare_model(model: torch.nn.Module, precision: Precision) -> torch.nn.Module:
    """Puts ``model``'s 4-d weights in channels_last when ``precision`` asks for it (in place;
    returns the model). The detectors then batch their images channels_last too."""
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    return model
