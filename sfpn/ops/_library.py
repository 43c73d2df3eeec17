"""The sfpn operator library: every op's schema, defined once, and the registry of ops.

Every op is a dispatcher op, ``torch.ops.sfpn.<name>``, defined here from Python so that it
exists whether or not the compiled extension is built. Each op module (``sfpn/ops/<op>.py``)
calls :func:`define` with the op's schema and its pure-PyTorch reference, which is registered for
``CompositeExplicitAutograd``: the fallback that serves every device no faster kernel claims.
Faster kernels register per dispatch key and win over it:

* C++ and CUDA kernels: ``csrc/cpu/<op>.cpp`` and ``csrc/cuda/<op>.cu`` end with a
  ``TORCH_LIBRARY_IMPL(sfpn, CPU|CUDA, m)`` block; ``sfpn._extension`` loads them (before or
  after the schemas are defined: the dispatcher accepts kernels for a not yet defined op).
* Triton kernels (``kernels/<op>.py``): the op module registers them for ``CUDA``;
  ``sfpn.kernels.interpret_on_cpu()`` registers them for ``CPU`` for the length of a block (over
  a C++ kernel, where the op has one: ``upsample_cross_entropy``'s, ``csrc/cpu/cross_entropy.cpp``).

So the public functions validate, document and call ``torch.ops.sfpn.<name>``; which kernel runs
is the dispatcher's choice, the same in eager mode, under ``torch.compile``, ``opcheck`` and fake
tensors. :data:`OPS` lists every public op: ``python -m sfpn.info``, the tests and the benchmarks
read it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Iterable

import torch

from .. import kernels
from ._validate import OpTypeError

LIBRARY = torch.library.Library("sfpn", "DEF")

#: The backends an op can have besides its reference.
COMPILED, COMPILED_CPU, TRITON = "compiled", "compiled_cpu", "triton"


@dataclasses.dataclass(frozen=True)
class Op:
    """One public op of the registry."""

    name: str
    #: ``COMPILED`` (C++ kernel for CPU, CUDA kernel for CUDA in ``sfpn._C``), ``COMPILED_CPU``
    #: (a C++ kernel for CPU only; the reference serves CUDA) or ``TRITON``.
    backend: str
    #: The names of the ops its autograd formula calls (``<name>_backward``), if any.
    backward: tuple[str, ...] = ()
    #: The Triton implementation registered for CUDA (and for CPU by ``interpret_on_cpu``), by op
    #: name (the op and its backward ops).
    triton: dict[str, Callable] = dataclasses.field(default_factory=dict)
    #: A ``TRITON`` op whose CPU tensors C++ kernels in ``sfpn._C`` serve (the op and its backward
    #: ops; the Triton kernels serve CUDA only).
    compiled_on_cpu: bool = False

    @property
    def cpu_kernel(self) -> bool:
        """Whether ``sfpn._C`` has a C++ kernel for the op's CPU tensors."""
        return self.backend in (COMPILED, COMPILED_CPU) or self.compiled_on_cpu


#: Public op name -> :class:`Op`, in the order ``sfpn.info`` prints them.
OPS: dict[str, Op] = {}
#: Every defined op's (public and backward) reference implementation, by name.
REFERENCES: dict[str, Callable] = {}


def define(schema: str, reference: Callable) -> str:
    """Defines ``sfpn::<name>`` from ``schema`` with ``reference`` as its every-device fallback;
    quantized tensors, which no op takes, get :func:`_quantized_argument_error`."""
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    LIBRARY.impl(name, reference, "CompositeExplicitAutograd")
    for key in ("QuantizedCPU", "QuantizedCUDA"):
        LIBRARY.impl(name, _quantized_argument_error(name), key)
    REFERENCES[name] = reference
    return name


def _quantized_argument_error(name: str) -> Callable:
    """The kernel ``sfpn::<name>`` runs when an argument is a quantized tensor: a one-line
    :class:`OpTypeError` naming the argument and its dtype. (The reference would otherwise take it
    and fail somewhere inside; torchvision's ``roi_align`` and ``nms`` take ``quint8`` on the CPU.)
    The public functions' own checks say the same before the op is reached; this serves direct
    and scripted calls."""
    arguments = [argument.name for argument in getattr(torch.ops.sfpn, name).default._schema.arguments]

    def kernel(*args):
        quantized = [
            (argument, tensor.dtype)
            for argument, value in zip(arguments, args)
            for tensor in (value if isinstance(value, (list, tuple)) else [value])
            if isinstance(tensor, torch.Tensor) and tensor.is_quantized
        ]
        argument, dtype = quantized[0]  # the dispatcher chose this kernel for a quantized tensor
        raise OpTypeError(
            f"{argument} must be a floating tensor, got {str(dtype).replace('torch.', '')} "
            f"(sfpn::{name} takes no quantized tensors: dequantize them first)"
        )

    return kernel


@contextlib.contextmanager
def references(ops: Iterable[str] | None = None):
    """Inside this block the references serve ``ops`` (public op names, each with its backward
    ops; every op by default) on CPU and CUDA, over any compiled or Triton kernel: the comparison
    point of tests that run whole modules, and of profiles that price a kernel inside the detector
    (the registrations are temporary and removed on exit, which restores the kernels).
    ``allow_override``: torch before 2.13 refuses by default to override a kernel registered from
    Python (the Triton ones on CUDA)."""
    if ops is None:
        names = list(REFERENCES)
    else:
        if isinstance(ops, str):
            raise TypeError(f"ops must be a list of op names, got the string {ops!r}")
        ops = list(ops)
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise ValueError(f"ops must name sfpn ops ({', '.join(OPS)}), got {', '.join(unknown)}")
        names = [name for op in ops for name in (op, *OPS[op].backward)]
    library = torch.library.Library("sfpn", "IMPL")
    try:
        with warnings.catch_warnings():  # "overriding a previously registered kernel": the point
            warnings.simplefilter("ignore")
            for name in names:
                for key in ("CPU", "CUDA"):
                    library.impl(name, REFERENCES[name], key, allow_override=True)
        yield
    finally:
        library._destroy()


def register(op: Op) -> None:
    """Adds ``op`` to :data:`OPS`, registers its Triton kernels for CUDA when Triton imports, and
    hands them to :func:`sfpn.kernels.add_implementations` for ``interpret_on_cpu``."""
    OPS[op.name] = op
    kernels.add_implementations(op.triton)
    if kernels.AVAILABLE:
        for name, implementation in op.triton.items():
            LIBRARY.impl(name, implementation, "CUDA")


def autocast_to_float32(name: str) -> None:
    """Under ``torch.autocast`` (CPU and CUDA), run ``sfpn::<name>`` on float32 inputs, as
    torchvision does for its box ops."""
    op = getattr(torch.ops.sfpn, name).default

    def cast(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.float()
        if isinstance(value, (list, tuple)):
            return [cast(v) for v in value]
        return value

    for device_type in ("cpu", "cuda"):
        key = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))

        def kernel(*args, _excluded=excluded):
            with torch._C._ExcludeDispatchKeyGuard(_excluded):
                return op(*[cast(a) for a in args])

        LIBRARY.impl(name, kernel, key)


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout of an op's output that follows its ``(N, C, H, W)`` input ``x``: channels_last
    for a channels_last ``x`` on the CPU, whose kernels (and references) read and write NHWC as it
    is; contiguous otherwise (the CUDA and Triton kernels take NCHW). ``checks::is_channels_last``
    in csrc/checks.h is the C++ side of the same rule."""
    if x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_like_layout(x: torch.Tensor, shape) -> torch.Tensor:
    """An uninitialised ``shape`` tensor of ``x``'s dtype and device in :func:`output_memory_format`
    of ``x``: the fakes' output of the ops whose output follows ``x``'s layout."""
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=output_memory_format(x))


def statistics_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a normalisation op (``group_norm_relu``, ``batch_norm_relu``) computes and returns
    its statistics in for input ``x``: float32, float64 for float64 ``x``, as ATen's."""
    return torch.promote_types(x.dtype, torch.float32)


def in_statistics_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the references hand it to ATen's normalisation kernels with parameters in
    :func:`statistics_dtype`: the CPU kernels read fp16/bf16 ``x`` as it is (and in any layout),
    computing in float32; elsewhere ``x`` is cast first."""
    return x if x.device.type == "cpu" else x.to(statistics_dtype(x))


def serving(name: str, device_type: str) -> str:
    """Which kernel serves ``sfpn::<name>`` on ``device_type`` now: ``"C++"``, ``"CUDA"``,
    ``"Triton"`` or ``"reference"``."""
    key = {"cpu": "CPU", "cuda": "CUDA"}[device_type]
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"sfpn::{name}", key):
        return "reference"
    op = OPS[name]
    if key == "CPU":
        return "Triton" if op.triton and kernels.interpreting_on_cpu() else "C++"
    return "Triton" if op.backend == TRITON else "CUDA"
