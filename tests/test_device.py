import os

import pytest
import torch

from srctl import device as D
from srctl.errors import SrctlError


def test_a_named_device_is_taken_as_named():
    assert D.pick_device("cpu") == torch.device("cpu")
    native = (
        "cuda"
        if torch.cuda.is_available()
        else "mps"
        if torch.backends.mps.is_available()
        else "cpu"
    )
    assert D.pick_device() == torch.device(native)
    # a name this machine has no device for, or no device's name: one line, not torch's traceback
    for name, reason in [("cuda:99", "has no such device"), ("bogus", "not a device name")]:
        with pytest.raises(SrctlError, match=f"--device {name}: .*{reason}"):
            D.pick_device(name)


def test_precision_as_asked_else_what_the_hardware_computes_natively():
    cpu = torch.device("cpu")
    assert D.precision("fp32", cpu) is None
    assert D.precision("bf16", cpu) is torch.bfloat16 and D.precision("fp16", cpu) is torch.float16
    assert D.precision(None, cpu) is D.autocast_dtype(cpu)
    # the kernel's word for what the CPU has (not torch's, which device.py asks): bf16 is native
    # with AVX512-BF16 or AMX, unless torch is held below AVX-512 (ATEN_CPU_CAPABILITY=avx2, as
    # bench/ and some CI runs do)
    with open("/proc/cpuinfo") as cpuinfo:  # (x86 Linux: CI's and the bench machines')
        flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    held = os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("avx2", "default")
    native = bool({"avx512_bf16", "amx_tile"} & set(flags)) and not held
    assert D.autocast_dtype(cpu) is (torch.bfloat16 if native else None)


def test_torch_held_to_avx2_trains_and_infers_in_fp32():
    """ATEN_CPU_CAPABILITY=avx2 (what an AVX2-only CPU runs; also how bench/ approximates one):
    bf16 is not native there, so the auto precision is fp32 even on a CPU with AVX512-BF16."""
    import os
    import subprocess
    import sys

    code = (
        "import torch; from srctl import device as D; print(D.autocast_dtype(torch.device('cpu')))"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "None"
