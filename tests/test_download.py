"""The download stage against a real HTTP server on 127.0.0.1 and real tarballs of BSDS300."""

from __future__ import annotations

import dataclasses
import http.server
import io
import socket
import tarfile
import threading
import time
from pathlib import Path

import pytest

from srctl import params as P
from srctl.download import content_hash, download
from srctl.errors import SrctlError

from conftest import BSDS300

OFFICIAL = P.Download().content_sha256


@pytest.fixture(scope="module")
def tarball(tmp_path_factory) -> Path:
    """BSDS300-images.tgz rebuilt from the shared byte-exact copy."""
    path = tmp_path_factory.mktemp("tgz") / "BSDS300-images.tgz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.add(BSDS300, arcname="BSDS300")
    return path


def cfg(url: str, **kw) -> P.Download:
    return dataclasses.replace(P.Download(), **{"url": url, "retries": 2, "timeout_s": 5.0, **kw})


def test_shared_copy_has_the_official_content_hash():
    assert content_hash(BSDS300) == OFFICIAL


def test_http_download_verifies_and_extracts(tarball, serve, tmp_path):
    (tmp_path / "BSDS300-images.tgz").symlink_to(tarball)
    raw = tmp_path / "data" / "raw"
    assert download(cfg(serve("BSDS300-images.tgz")), raw) == OFFICIAL
    assert len(list((raw / "BSDS300" / "images" / "train").glob("*.jpg"))) == 200
    assert not (raw / "BSDS300-images.tgz").exists()
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]  # no temp folders left


def test_mirror_folder_and_tgz(tarball, tmp_path):
    assert download(P.Download(), tmp_path / "a", mirror=str(BSDS300)) == OFFICIAL
    assert download(P.Download(), tmp_path / "b", mirror=str(tarball)) == OFFICIAL


def _keeps_raw_as_it_was(raw: Path, run) -> str:
    raw.mkdir(parents=True)
    (raw / "keep.txt").write_text("old")
    with pytest.raises(SrctlError) as err:
        run()
    assert [p.name for p in raw.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in raw.parent.iterdir()) == ["raw"]
    assert "\n" not in str(err.value)
    return str(err.value)


def test_wrong_checksum_leaves_raw_untouched(tarball, serve, tmp_path):
    (tmp_path / "BSDS300-images.tgz").symlink_to(tarball)
    bad = cfg(serve("BSDS300-images.tgz"), content_sha256="0" * 64)
    msg = _keeps_raw_as_it_was(
        tmp_path / "data" / "raw", lambda: download(bad, tmp_path / "data" / "raw")
    )
    assert "does not match the expected" in msg


def test_connection_refused_retries_then_says_so(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    raw = tmp_path / "data" / "raw"
    msg = _keeps_raw_as_it_was(
        raw, lambda: download(cfg(f"http://127.0.0.1:{port}/x.tgz"), raw, backoff_s=0.01)
    )
    assert "after 2 tries" in msg and "SRCTL_DATA_MIRROR" in msg


def test_missing_file_and_html_page(serve, tmp_path):
    raw = tmp_path / "data" / "raw"
    msg = _keeps_raw_as_it_was(raw, lambda: download(cfg(serve("nothing.tgz")), raw))
    assert "HTTP 404" in msg
    (tmp_path / "error.html").write_text("<html>Service unavailable</html>")
    with pytest.raises(SrctlError, match="HTML page"):
        download(cfg(serve("error.html")), raw)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_unsafe_tarballs_are_refused(tmp_path, kind):
    path = tmp_path / "evil.tgz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(
            {"dotdot": "BSDS300/../../escape.txt", "absolute": "/tmp/escape.txt"}.get(
                kind, "BSDS300/link"
            )
        )
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    raw = tmp_path / "data" / "raw"
    msg = _keeps_raw_as_it_was(raw, lambda: download(P.Download(), raw, mirror=str(path)))
    assert "unsafe member" in msg or "link" in msg
    assert not (tmp_path / "escape.txt").exists()


def test_missing_mirror_is_a_clear_error(tmp_path):
    with pytest.raises(SrctlError, match="no such folder or .tgz"):
        download(P.Download(), tmp_path / "raw", mirror=str(tmp_path / "nope"))


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """Serves `body` badly on purpose: `mode` says how, `seen` counts requests."""

    body, mode, seen = b"", "ok", 0

    def do_GET(self):
        cls = type(self)
        cls.seen += 1
        if cls.mode == "slow":
            time.sleep(1.5)
        if cls.mode == "flaky" and cls.seen == 1:
            self.send_error(503, "try again")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-gzip")
        self.send_header("Content-Length", str(len(cls.body)))
        self.end_headers()
        self.wfile.write(cls.body[: len(cls.body) // 2] if cls.mode == "truncated" else cls.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def misbehaving(tarball):
    handler = type("Handler", (_Misbehaving,), {"body": tarball.read_bytes()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{server.server_port}/BSDS300-images.tgz"
    server.shutdown()
    server.server_close()


def test_truncated_body_is_retried_then_reported(misbehaving, tmp_path):
    handler, url = misbehaving
    handler.mode = "truncated"
    raw = tmp_path / "data" / "raw"
    msg = _keeps_raw_as_it_was(raw, lambda: download(cfg(url), raw, backoff_s=0.01))
    assert handler.seen == 2 and "after 2 tries" in msg


def test_timeout_is_retried_then_reported(misbehaving, tmp_path):
    handler, url = misbehaving
    handler.mode = "slow"
    raw = tmp_path / "data" / "raw"
    msg = _keeps_raw_as_it_was(raw, lambda: download(cfg(url, timeout_s=0.3), raw, backoff_s=0.01))
    assert handler.seen == 2 and "timed out" in msg.lower()


def test_a_server_error_is_retried_and_the_retry_succeeds(misbehaving, tmp_path):
    handler, url = misbehaving
    handler.mode = "flaky"
    assert download(cfg(url), tmp_path / "raw", backoff_s=0.01) == OFFICIAL
    assert handler.seen == 2
