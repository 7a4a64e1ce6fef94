"""Where the torchxrayvision header tables come from: a pinned wheel, found or downloaded.

The wheel is only ever read as a zip archive (never installed or imported). It is looked up in
this order: the file named by ``RADSENTRY_XRV_WHEEL``; the cache directory (``RADSENTRY_XRV_CACHE``
or ``.radsentry-cache/`` at the repository root); else it is downloaded into the cache with
``python -m pip download --no-deps torchxrayvision==1.5.7``. Its SHA-256 is checked every time,
so every number derived from it refers to the same bytes.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import IO, Final

XRV_VERSION: Final = "1.5.7"
WHEEL_NAME: Final = f"torchxrayvision-{XRV_VERSION}-py3-none-any.whl"
WHEEL_SHA256: Final = "95f6c3475661f3515d4258deb0855bd5d1b1a56e0b65384251d3dd3fa61fac41"
DATA_DIR: Final = "torchxrayvision/data/"
WHEEL_ENV: Final = "RADSENTRY_XRV_WHEEL"
CACHE_ENV: Final = "RADSENTRY_XRV_CACHE"
DOWNLOAD_TIMEOUT_S: Final = 600.0


class XrvDataError(RuntimeError):
    """The header tables could not be obtained or read; the message says why and what to do."""


def default_cache_dir() -> Path:
    """``RADSENTRY_XRV_CACHE``, else ``.radsentry-cache/`` at the repository root (or cwd)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    root = Path(__file__).resolve().parents[3]
    base = root if (root / "pyproject.toml").is_file() else Path.cwd()
    return base / ".radsentry-cache"


def locate_wheel(cache_dir: Path | None = None, *, python: str = sys.executable) -> Path:
    """Path of the verified torchxrayvision wheel, downloading it into the cache when missing.

    Raises :class:`XrvDataError` when ``RADSENTRY_XRV_WHEEL`` names a missing or different file,
    or when the download fails (with pip's exit status and the end of its output).
    """
    configured = os.environ.get(WHEEL_ENV)
    if configured:
        wheel = Path(configured)
        if not wheel.is_file():
            raise XrvDataError(f"{WHEEL_ENV}={configured} does not name a file")
        return _verified(wheel)
    cache_dir = cache_dir or default_cache_dir()
    wheel = cache_dir / WHEEL_NAME
    if not wheel.is_file():
        download_wheel(cache_dir, python=python)
    return _verified(wheel)


def download_wheel(cache_dir: Path, *, python: str = sys.executable) -> Path:
    """Run ``pip download`` into a scratch directory, then move the wheel into ``cache_dir``.

    The move is atomic, so an interrupted download never leaves a truncated wheel in the cache.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    command = [
        python,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        f"torchxrayvision=={XRV_VERSION}",
        "-d",
        str(scratch),
    ]
    try:
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise XrvDataError(f"could not run {' '.join(command)}: {exc}") from exc
        if done.returncode != 0 or not (scratch / WHEEL_NAME).is_file():
            output = (done.stderr or done.stdout or "").strip()[-2000:]
            raise XrvDataError(
                f"`{' '.join(command)}` exited with status {done.returncode} without producing "
                f"{WHEEL_NAME}. Output:\n{output}\nDownload it by hand and set {WHEEL_ENV}."
            )
        target = cache_dir / WHEEL_NAME
        os.replace(scratch / WHEEL_NAME, target)
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@cache
def _verified(wheel: Path) -> Path:
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise XrvDataError(
            f"{wheel} has SHA-256 {digest}, not that of torchxrayvision {XRV_VERSION} "
            f"({WHEEL_SHA256}); delete it or point {WHEEL_ENV} at the right file"
        )
    return wheel


def open_member(wheel: Path, name: str) -> IO[bytes]:
    """The bytes of ``torchxrayvision/data/<name>`` inside the wheel.

    A ``.gz`` member is decompressed; a ``.csv.zip`` member yields its one inner file.
    """
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(DATA_DIR + name)
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        elif name.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                data = inner.read(inner.namelist()[0])
    except (OSError, KeyError, IndexError, zipfile.BadZipFile) as exc:
        raise XrvDataError(f"cannot read {DATA_DIR}{name} from {wheel}: {exc}") from exc
    return io.BytesIO(data)


def read_columns(wheel: Path, name: str, columns: Sequence[str]) -> dict[str, list[str]]:
    """The named columns of a CSV member, one list of cell strings per column.

    Missing trailing cells read as ''. Equal cell values share one string object, so a column of
    a few distinct values costs a pointer per row.
    """
    rows = _csv_rows(wheel, name)
    header = next(rows)
    missing = [c for c in columns if c not in header]
    if missing:
        raise XrvDataError(f"{name} has no column(s) {missing}; its columns are {header}")
    positions = [header.index(c) for c in columns]
    table: dict[str, list[str]] = {c: [] for c in columns}
    interned: dict[str, str] = {}
    lists = [table[c] for c in columns]
    for row in rows:
        for position, cells in zip(positions, lists, strict=True):
            value = row[position] if position < len(row) else ""
            cells.append(interned.setdefault(value, value))
    return table


def _csv_rows(wheel: Path, name: str) -> Iterator[list[str]]:
    with io.TextIOWrapper(open_member(wheel, name), encoding="utf-8", newline="") as text:
        yield from csv.reader(text)
