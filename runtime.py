"""Device, mixed precision, compilation and distribution (torchrun: the process group, running
an action on rank 0 alone, sums over ranks), decided in one place for every script. Not here:
the loop (train.py), the flags (train_flags.py).

The same code runs on CPU, CUDA and Apple's MPS: autocast is a context (a no-op when AMP is off), the
GradScaler is only enabled for fp16, and the CUDA-only settings are marked below.
"""
import contextlib
import datetime
import os
import sys
import warnings
from dataclasses import dataclass

import torch

from errors import DataError, TrainingError


def resolve_device(name):
    """'auto' -> cuda when available, else Apple's mps, else cpu; anything else must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "mps" and not mps_available():
        raise DataError(f"--device {name}: Apple's MPS is not available on this machine (it needs an Apple-silicon "
                        "Mac with macOS 12.3 or later; use --device cpu)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DataError(f"--device {name}: only cpu, cuda and mps are supported")
    count = torch.cuda.device_count() if device.type == "cuda" else 1  # (one mps device; cpu:N is the same CPU)
    if device.type != "cpu" and device.index is not None and device.index >= count:
        raise DataError(f"--device {name}: this machine has {count} {device.type} device{'s' if count != 1 else ''} "
                        f"({', '.join(f'{device.type}:{i}' for i in range(count))})")
    return device


def mps_available():
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def synchronize(device):
    """Wait for the device's queued work (for timings): CUDA and MPS run asynchronously."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def default_amp(device):
    """Mixed precision by default where the hardware does bf16 natively: CUDA, and CPUs with
    AMX or AVX512-BF16 (there bf16 autocast trains ~1.6x faster and its loss curve matches
    fp32 within seed noise; docs/platforms.md). Elsewhere bf16 is emulated and slower: fp32."""
    if device.type == "cuda":
        return True
    if device.type == "mps":  # not measured here (no Mac): fp32 until someone does; --amp gives bf16
        return False
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


# ---------------------------------------------------------------- torchrun / DistributedDataParallel

PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=10)  # longest wait at a collective (eval, checkpoint)


@dataclass
class Distributed:
    """This process's place in a torchrun launch (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def all_reduce(self, tensor, op="sum"):
        """Sum (or max) a tensor over all ranks, in place; a no-op for one process."""
        if self.enabled:
            torch.distributed.all_reduce(tensor, op=getattr(torch.distributed.ReduceOp, op.upper()))
        return tensor

    def all_gather(self, value):
        """[value of rank 0, value of rank 1, ...] for a picklable value."""
        if not self.enabled:
            return [value]
        values = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def broadcast_buffers(self, module):
        """Rank 0's buffers (BatchNorm statistics) on every rank; a no-op for one process."""
        if self.enabled:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def barrier(self):
        if self.enabled:
            torch.distributed.barrier()


def setup_distributed(device_name):
    """Join the process group when torchrun started us (RANK, LOCAL_RANK and WORLD_SIZE set):
    NCCL with one GPU per local rank on CUDA, Gloo on CPU. Returns (Distributed, device)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Distributed(), resolve_device(device_name)
    dist = Distributed(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    device = resolve_device(device_name)
    if device.type == "cuda":  # CUDA only: one GPU per process
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    else:  # the ranks of one machine share its cores
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
    return dist, device


def cleanup_distributed(dist):
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def on_main(dist, action):
    """Run action on rank 0 only and return its result on every rank; a DataError there is
    raised on every rank (none is left waiting)."""
    result, error = None, None
    if dist.is_main:
        try:
            result = action()
        except DataError as raised:
            error = str(raised)
    result, error = dist.all_gather((result, error))[0]
    if error:
        raise DataError(error)
    return result


def sum_over_ranks(totals, dist):
    """The epoch's metric totals over all ranks (the totals themselves on one process)."""
    if not dist.enabled:
        return totals
    sums = torch.stack([totals["loss_sum"].double(), totals["skipped"].double(), *totals["correct"].double(),
                        torch.tensor(float(totals["count"]), device=totals["loss_sum"].device, dtype=torch.float64)])
    loss_sum, skipped, top1, top5, count = dist.all_reduce(sums).tolist()
    device = totals["loss_sum"].device
    return {"loss_sum": torch.tensor(loss_sum, device=device), "skipped": torch.tensor(skipped, device=device),
            "correct": torch.tensor([top1, top5], device=device), "count": int(count)}


def check_ranks_agree(model, dist, log):
    """DDP keeps every rank's weights equal; check it once at the end (a cheap checksum per tensor)."""
    checksums = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    if any(not torch.equal(checksums, other) for other in dist.all_gather(checksums)):
        raise TrainingError("the ranks' parameters differ after training: the distributed setup is broken")
    log(f"parameters identical on all {dist.world_size} ranks")
