"""Device, mixed precision and compilation, decided in one place for train.py and evaluate.py.

The same code runs on CPU and CUDA: autocast is a context (a no-op when AMP is off), the
GradScaler is only enabled for fp16, and the CUDA-only settings are marked below.
"""
import contextlib
import sys
import warnings

import torch

from layout import DataError


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; anything else must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise DataError(f"--device {name}: only cpu and cuda are supported")
    return device


def default_amp(device):
    """Mixed precision by default where the hardware does bf16 natively: CUDA, and CPUs with
    AMX or AVX512-BF16 (there bf16 autocast trains ~1.5x faster and its loss curve matches
    fp32 within seed noise; see the README). Elsewhere bf16 is emulated and slower: fp32."""
    if device.type == "cuda":
        return True
    native = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private but stable since torch 2.1
    return any(getattr(torch.cpu, name, lambda: False)() for name in native)


def amp_dtype(device, amp, requested="auto"):
    """The autocast dtype, or None for fp32. bf16 where supported (no scaler needed), else fp16
    (with a GradScaler); `requested` (bfloat16 or float16) overrides the choice."""
    if not amp:
        return None
    if requested != "auto":
        return getattr(torch, requested)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():  # CUDA only: pre-Ampere GPUs
        return torch.float16
    return torch.bfloat16


def autocast(device, dtype):
    """A fresh autocast context for one forward pass (nullcontext for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(device):
    if device.type == "cuda":  # CUDA only: TF32 matmuls and convolutions on Ampere and newer
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def maybe_compile(model, enabled, mode="default"):
    """torch.compile(model), or the model itself when disabled or when no compiler works here
    (checked by compiling a tiny function, so the failure shows before training starts)."""
    if not enabled:
        return model
    try:
        probe = torch.compile(lambda t: t * 2 + 1)
        probe(torch.ones(2))
    except Exception as error:  # no C compiler, unsupported platform, ...
        print(f"warning: torch.compile does not work here ({type(error).__name__}); running eager", file=sys.stderr)
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.compile(model, mode=mode)
