"""Export a trained model to ONNX and check it against PyTorch with onnxruntime on a real image."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from srctl import model as M
from srctl import params as P
from srctl.color import y_channel
from srctl.errors import SrctlError
from srctl.files import atomic_path
from srctl.infer import check_outputs, is_folder
from srctl.pictures import decode_image, rgb
from srctl.upscale import receptive_radius, upscale_float


def default_check_image() -> Path:
    """The first BSDS300 test image in data/raw: a real photo to compare the runtimes on."""
    found = sorted((P.paths().dataset / "images" / "test").glob("*.jpg"))
    if not found:
        raise SrctlError("no BSDS300 test image in data/raw: give --check-image")
    return found[0]


def export_onnx(
    path: str | Path, check_image: Path, force: bool, load_net: Callable[[], M.ESPCN]
) -> tuple[M.ESPCN, float]:
    """Write `path`: input `y` [N, 1, H, W] float 0..1 (any N, H, W) -> `y_sr` [N, 1, sH, sW].

    Returns the network and the max abs difference between onnxruntime and PyTorch on the Y of
    `check_image`. The image and `path` are checked before `load_net` fetches the model: `path`
    is never the image, nor (without `force`) an existing file."""
    import onnxruntime

    y = torch.from_numpy(y_channel(rgb(decode_image(check_image, str(check_image)))))
    y = y.float().div(255)[None, None]
    if is_folder(path):
        raise SrctlError(f"{path}: is a folder; -o names the .onnx file to write")
    path = Path(path)
    check_outputs([check_image], [path], force)
    net = load_net().cpu().eval()
    dims = {
        0: torch.export.Dim("n", min=1, max=1024),
        2: torch.export.Dim("h", min=8),
        3: torch.export.Dim("w", min=8),
    }
    with atomic_path(path) as tmp:
        torch.onnx.export(
            net,
            (torch.rand(1, 1, 32, 48),),
            str(tmp),
            input_names=["y"],
            output_names=["y_sr"],
            dynamic_shapes={"y": dims},
            dynamo=True,
            external_data=False,
            verbose=False,  # no "[torch.onnx] ..." progress lines among the command's output
        )
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {"y": y.numpy()})[0]
        with torch.inference_mode():
            want = net(y).numpy()
        if got.shape != want.shape:
            raise SrctlError(f"ONNX output {got.shape} differs from PyTorch's {want.shape}")
        diff = float(np.abs(got - want).max())
    return net, diff


class _Upscale(torch.nn.Module):
    """upscale.upscale_float on uint8 pictures, in fp32, with bicubic as a convolution."""

    def __init__(self, net: M.ESPCN):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = upscale_float(self.net, x.float(), None, M.bicubic_as_conv)
        return y.round().clamp(0, 255).to(torch.uint8)


def export_upscale(net: M.ESPCN, path: Path, channels: int) -> None:
    """Write `path`: the whole upscale of runtime.OnnxEngine, uint8 [N, channels, h, w] (L, LA,
    RGB or RGBA) -> uint8 [N, channels, h*s, w*s], with the scale and the halo tiles need in
    its metadata."""
    import onnx

    net = net.cpu().eval()
    dims = {
        0: torch.export.Dim("n", min=1, max=1024),
        2: torch.export.Dim("h"),
        3: torch.export.Dim("w"),
    }
    example = torch.randint(0, 256, (2, channels, 32, 48), dtype=torch.uint8)  # 1 would fix n
    with atomic_path(path) as tmp:
        program = torch.onnx.export(
            _Upscale(net).eval(),
            (example,),
            input_names=["x"],
            output_names=["y"],
            dynamic_shapes={"x": dims},
            dynamo=True,
            verbose=False,
        )
        graph = program.model_proto
        meta = {"scale": net.scale, "halo": max(receptive_radius(net), 2)}
        onnx.helper.set_model_props(graph, {k: str(v) for k, v in meta.items()})
        onnx.save(graph, str(tmp))
