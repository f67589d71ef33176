"""`srctl serve` (= `mlflow models serve` on a registered model), driven over real HTTP on
127.0.0.1."""

from __future__ import annotations

import base64
import io
import os

import pytest
import requests
from PIL import Image

from srctl import model as M
from srctl import registry

from conftest import DATASETS, serve_champion, srctl_cli, stop_server, tiny_params


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A registered espcn-x3@champion in a real sqlite store, served by `srctl serve` on a free
    port."""
    root = tmp_path_factory.mktemp("serve")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
        "SRCTL_SERVE_MAX_BYTES": "1500000",
    }
    old = os.environ.copy()
    os.environ.update(env)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        M.save(M.ESPCN(3), root / "model")
        with registry.training_run(tiny_params(), "0" * 64) as run:
            uri = registry.log_model(root / "model")
        registry.log_evaluation(run.info.run_id, {"psnr": 28.0}, {}, {})
        registry.register(run.info.run_id, uri, "espcn-x3", "champion")
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(old)
    proc, url = serve_champion(env, root)
    yield url
    stop_server(proc)


def _post(url, *payloads: bytes):
    body = {"inputs": [base64.b64encode(p).decode() for p in payloads]}
    return requests.post(f"{url}/invocations", json=body, timeout=120)


def test_serves_on_loopback_only(server):
    import psutil

    port = int(server.rsplit(":", 1)[1])
    listening = {
        c.laddr.ip
        for c in psutil.net_connections("tcp")
        if c.status == "LISTEN" and c.laddr.port == port
    }
    assert listening == {"127.0.0.1"}


def test_images_in_base64_pngs_out(server):
    files = [
        (DATASETS / "Set5" / "baby.bmp").read_bytes(),
        (DATASETS / "Set14" / "bridge.bmp").read_bytes(),
    ]
    res = _post(server, *files)
    assert res.status_code == 200, res.text
    outs = res.json()["predictions"]
    for raw, b64 in zip(files, outs, strict=True):
        src, out = Image.open(io.BytesIO(raw)), Image.open(io.BytesIO(base64.b64decode(b64)))
        assert out.format == "PNG" and out.size == (src.width * 3, src.height * 3)


@pytest.mark.parametrize(
    "payload, reason",
    [(b"not an image", "not an image"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "input 0")],
)
def test_bad_images_are_4xx_with_a_message(server, payload, reason):
    res = _post(server, payload)
    assert 400 <= res.status_code < 500
    assert reason in res.json()["message"]


def test_too_many_pixels_is_4xx(server):
    buf = io.BytesIO()
    Image.new("L", (5000, 4000)).save(buf, format="PNG")  # 20 Mpx: over the 16.7 Mpx serving limit
    res = _post(server, buf.getvalue())
    assert res.status_code == 400 and "over the limit" in res.json()["message"]


def test_too_many_bytes_is_4xx(server):
    # 2.1 MB as BMP: over the 1.5 MB set above
    noise = Image.effect_noise((1000, 700), 50).convert("RGB")
    buf = io.BytesIO()
    noise.save(buf, format="BMP")
    res = _post(server, buf.getvalue())
    assert res.status_code == 400 and "request over 1500000 bytes" in res.json()["message"]


def test_a_port_in_use_is_one_line_before_any_server(server, tmp_path):
    """It printed that it served, then MLflow's 33-line traceback."""
    port = server.rsplit(":", 1)[1]
    res = srctl_cli("serve", "--port", port, cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr == (
        f"error: 127.0.0.1:{port}: cannot listen there (Address already in use); "
        "choose another --port\n"
    )


def test_an_unknown_model_is_one_line_before_any_server(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    res = srctl_cli("serve", "--run-id", "0123abcd", "--port", "1", cwd=tmp_path)
    assert res.returncode == 1 and res.stderr.startswith("error: no run 0123abcd in sqlite")
    assert len(res.stderr.strip().splitlines()) == 1 and "serving" not in res.stderr
