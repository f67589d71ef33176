"""The upscale on onnxruntime, without PyTorch: upscale.upscale_float exported as an ONNX graph
(once per model and kind of picture, kept in the cache) and run in fp32 on the CPU.

It is what `srctl infer` uses on a CPU without AMX (see `suits`): there PyTorch's import alone
(~2 s) took as long as the network on a 720p frame, and onnxruntime imports in 0.1-0.3 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

from srctl.errors import SrctlError
from srctl.files import cache_dir
from srctl.pictures import TILE, tiled

WEIGHTS, CONFIG = "model.safetensors", "config.json"  # model's: model.py imports torch
GRAPH_VERSION = "1"  # bump when the exported graph changes: the cache keys include it


def _amx() -> bool:
    """Whether PyTorch's bf16 would run on AMX tiles here, told without importing it: amx_bf16 in
    /proc/cpuinfo, unless ATEN_CPU_CAPABILITY holds torch below AVX-512. Where there is no
    /proc/cpuinfo, True: PyTorch decides there.

    AMX alone: on a CPU with AVX512-BF16 but no AMX (AMD EPYC, family 25), whole `srctl infer`
    processes in onnxruntime's fp32 took 0.66 s against PyTorch's bf16 2.23 s for a 481x321
    picture, 3.99 s against 5.16 s for 2000x1500, and were within 7% of it for 4000x3000
    (`bench/infer_speed.py --engines`)."""
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return True
    return "amx_bf16" in flags


def _accelerator() -> bool:
    """A GPU PyTorch would pick (device.pick_device), told without importing it: an NVIDIA or AMD
    driver loaded, or Apple silicon."""
    mac_gpu = platform.system() == "Darwin" and platform.machine() == "arm64"
    return mac_gpu or any(Path(p).exists() for p in ("/proc/driver/nvidia/version", "/dev/kfd"))


def suits(device: str | None, precision: str | None, size) -> bool:
    """Whether `srctl infer` runs on onnxruntime: on the CPU (asked, or no GPU to pick) in fp32
    (asked, or the default of a CPU without AMX), without --size (PyTorch resizes)."""
    if size or precision not in (None, "fp32") or device not in (None, "cpu"):
        return False
    if device is None and _accelerator():
        return False
    return precision == "fp32" or not _amx()


class OnnxEngine:
    """infer.engine on onnxruntime: uint8 [N, C, h, w] -> uint8 [N, C, h*s, w*s] (numpy), in
    tiles of `tile` pixels, equal to PyTorch's fp32 upscale within a level of 255."""

    def __init__(self, model_dir: Path, tile: int = TILE, progress: bool = False):
        self.model_dir, self.tile, self.progress = Path(model_dir), tile, progress
        try:
            parts = [(self.model_dir / name).read_bytes() for name in (CONFIG, WEIGHTS)]
        except OSError as exc:
            raise SrctlError(f"cannot load model from {model_dir}: {exc}") from exc
        # the graph is the model's: one per weights and config, so it is never stale
        self.digest = hashlib.sha256(GRAPH_VERSION.encode() + b"".join(parts)).hexdigest()[:20]
        self.sessions: dict[int, tuple] = {}
        # the scale from the config, so that infer checks its outputs before a first export
        try:
            self.scale = int(json.loads(parts[0])["scale"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SrctlError(f"{model_dir}: not a valid ESPCN config ({exc})") from exc

    @property
    def halo(self) -> int:
        """How far tiles overlap: the receptive radius, from the graph of RGB pictures."""
        return self._session(3)[1]

    def _session(self, channels: int):
        """The session for pictures of `channels` channels, with the graph's halo; the
        graph is exported (with PyTorch, once) when the cache has none."""
        if channels not in self.sessions:
            import onnxruntime

            path = cache_dir("onnx") / f"{self.digest}-c{channels}.onnx"
            if not path.is_file():
                from srctl import model as M
                from srctl.export import export_upscale

                if self.progress:  # a terminal: say why this first run takes longer
                    print("preparing this model for onnxruntime (once)...", file=sys.stderr)
                export_upscale(M.load(self.model_dir), path, channels)
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            meta = session.get_modelmeta().custom_metadata_map
            self.sessions[channels] = (session, int(meta["halo"]))
        return self.sessions[channels]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        (session, halo), s = self._session(x.shape[1]), self.scale
        n, c, h, w = x.shape
        out = np.empty((n, c, h * s, w * s), dtype=np.uint8)
        run = lambda part: session.run(None, {"x": np.ascontiguousarray(part)})[0]  # noqa: E731
        return tiled(x, out, s, self.tile, halo, run, self.progress)
