"""Stage `download`: BSDS300 from the official URL or a local mirror, verified, extracted
atomically.

Verification uses one content hash that holds for the tarball and for an extracted copy alike:
sha256 over the 300 JPEGs sorted by `BSDS300/images/<split>/<id>.jpg`, feeding name + NUL + bytes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import time
from pathlib import Path

from srctl import params as P
from srctl.errors import SrctlError, run_main
from srctl.files import atomic_dir

MIRROR_ENV = "SRCTL_DATA_MIRROR"


def content_hash(dataset: Path) -> str:
    """The BSDS300 content hash of an extracted `BSDS300/` folder."""
    files = sorted(
        (f"BSDS300/images/{p.parent.name}/{p.name}", p) for p in dataset.glob("images/*/*.jpg")
    )
    return _sha256(files)


def files_hash(paths: list[Path]) -> str:
    """The same kind of hash over any files (named by their file names, in the given order)."""
    return _sha256([(p.name, p) for p in paths])


def _sha256(files: list[tuple[str, Path]]) -> str:
    digest = hashlib.sha256()  # name + NUL + bytes of each file
    for name, path in files:
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def fetch(url: str, dest: Path, retries: int, timeout_s: float, backoff_s: float = 1.0) -> None:
    """GET `url` into `dest`; retry what a retry can fix (refused, timeout, cut-off body, 5xx)."""
    import requests  # lazy: only this path needs it

    reason = "no attempt made"
    for attempt in range(1, retries + 1):
        try:
            with requests.get(url, stream=True, timeout=timeout_s) as resp:
                if resp.status_code >= 500 or resp.status_code == 429:
                    raise requests.ConnectionError(f"HTTP {resp.status_code} {resp.reason}")
                if resp.status_code >= 400:
                    raise SrctlError(
                        f"cannot download {url}: HTTP {resp.status_code} {resp.reason}"
                    )
                if "text/html" in resp.headers.get("Content-Type", ""):
                    raise SrctlError(
                        f"cannot download {url}: the server sent an HTML page, not the archive"
                    )
                with open(dest, "wb") as out:
                    for chunk in resp.iter_content(chunk_size=1 << 20):
                        out.write(chunk)
            return
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            reason = _first_line(exc)
        if attempt < retries:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise SrctlError(
        f"cannot download {url} after {retries} tries ({reason}); "
        f"offline? set {MIRROR_ENV} to a local BSDS300 folder or .tgz"
    )


def extract(archive: Path, dest: Path) -> None:
    """Extract a .tgz into `dest`, refusing links, devices and members that would land outside."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if m.name.startswith(("/", "\\")) or ".." in parts:
                    raise SrctlError(f"{archive.name}: unsafe member path {m.name!r}")
                if not (m.isfile() or m.isdir()):
                    raise SrctlError(f"{archive.name}: refusing link or special member {m.name!r}")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SrctlError(
            f"{archive.name}: not a readable .tgz archive ({_first_line(exc)})"
        ) from exc


def download(
    cfg: P.Download, raw_dir: Path, mirror: str | None = None, backoff_s: float = 1.0
) -> str:
    """Fill `raw_dir/BSDS300` from `mirror` (folder or .tgz) or the URL; returns the verified
    content hash.

    `raw_dir` is replaced only after verification succeeds: a failure leaves it as it was."""
    with atomic_dir(raw_dir) as tmp:
        if mirror:
            source = Path(mirror).expanduser()
            if source.is_dir():
                shutil.copytree(source, tmp / "BSDS300")
            elif source.is_file():
                extract(source, tmp)
            else:
                raise SrctlError(f"{MIRROR_ENV}={mirror}: no such folder or .tgz file")
        else:
            source = cfg.url
            archive = tmp / "BSDS300-images.tgz"
            fetch(cfg.url, archive, cfg.retries, cfg.timeout_s, backoff_s)
            extract(archive, tmp)
            archive.unlink()
        dataset = tmp / "BSDS300"
        if not dataset.is_dir():
            raise SrctlError(f"{source}: no BSDS300/ folder in it")
        got = content_hash(dataset)
        if got != cfg.content_sha256:
            raise SrctlError(
                f"{source}: content sha256 {got} does not match the expected {cfg.content_sha256}"
            )
    return got


def main() -> None:
    digest = download(P.load().download, P.paths().raw, os.environ.get(MIRROR_ENV))
    print(f"download: BSDS300 verified (content sha256 {digest[:16]}...) in data/raw/BSDS300")


if __name__ == "__main__":
    run_main(main)
