import torch

from srctl import device as D


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


def test_precision_as_asked_else_what_the_hardware_computes_natively():
    cpu = torch.device("cpu")
    assert D.precision("fp32", cpu) is None
    assert D.precision("bf16", cpu) is torch.bfloat16 and D.precision("fp16", cpu) is torch.float16
    assert D.precision(None, cpu) is D.autocast_dtype(cpu)
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert D.autocast_dtype(cpu) is (torch.bfloat16 if native else None)
