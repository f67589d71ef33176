"""Where the network runs and in what precision: one answer for training and inference alike."""

from __future__ import annotations

import torch

from srctl.errors import SrctlError


def pick_device(name: str | None = None) -> torch.device:
    """The device called `name` (cpu, cuda, cuda:1, mps); else the GPU if any; else the CPU."""
    if name:
        return _named(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _named(name: str) -> torch.device:
    """`name` as a device this machine has, or a one-line error."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SrctlError(f"--device {name}: not a device name (cpu, cuda, cuda:1, mps)") from exc
    have = {
        "cpu": lambda: True,
        "cuda": lambda: (device.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available,
    }.get(device.type)
    if not (have and have()):
        raise SrctlError(f"--device {name}: this machine has no such device")
    return device


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware computes it natively (CUDA; CPUs with AVX512-BF16 or AMX), fp16 on
    MPS; None (fp32) elsewhere."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    cpu_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    # ATEN_CPU_CAPABILITY=avx2 holds torch to AVX2, where bf16 is no longer native: fp32 then
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    return torch.bfloat16 if (cpu_bf16 or amx) and avx512 else None


PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def precision(name: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `name` (fp16, bf16, fp32), or the hardware's native one when None."""
    return PRECISIONS[name] if name else autocast_dtype(device)
