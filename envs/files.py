"""Atomic writes: a crash or a kill never leaves a half-written file or model directory behind."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def is_local_path(path: str) -> bool:
    """A filesystem path rather than a hub id such as `GSAI-ML/LLaDA-8B-Instruct`."""
    return path.startswith(("/", "./", "../", "~")) or Path(path).exists()


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temp file beside `path` and rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def replace_dir(out: Path, fill: Callable[[Path], None]) -> Path:
    """Build a directory with `fill(tmp)` next to `out`, then swap it in; the previous `out` stays whole
    until the new one is complete."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    fill(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
