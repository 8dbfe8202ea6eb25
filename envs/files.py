"""Atomic writes and clean stops: a crash, a kill or Ctrl-C never leaves a half-written file or model
directory behind, and never deletes a file the command did not write."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path


class Interrupted(RuntimeError):
    """The command stopped early (SIGINT/SIGTERM, `ray job stop`) after saving what it had; exit code 130."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (what `ray job stop`, `kill` and schedulers send) is handled like Ctrl-C, so the same
    `except KeyboardInterrupt` saves the work."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_writable(path: str | Path, what: str, directory: bool = False) -> None:
    """Before any work: `path` can be written (its nearest existing ancestor is a writable directory, and it
    is not a directory where a file is wanted or the other way round)."""
    path = Path(path).expanduser().absolute()
    if path.exists() and path.is_dir() != directory:
        raise ValueError(f"{what}={path} is {'a file' if path.is_file() else 'a directory'}, not "
                         f"{'a directory' if directory else 'a file'}")
    ancestor = path if directory and path.exists() else path.parent  # a file is written beside itself, renamed
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{what}={path} cannot be created: {ancestor} is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{what}={path} cannot be written: {ancestor} is not writable")


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


def publish_dir(out: Path, fill: Callable[[Path], None], last: str = "") -> Path:
    """Build a directory with `fill(tmp)` next to `out`, then publish it: a new `out` appears whole (one
    rename); into an existing `out` each file `fill` wrote is moved over its old version (each atomically,
    `last` after all the others) and every other file of `out` is left alone."""
    out = Path(out)
    if not out.exists():
        return replace_dir(out, fill)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        for item in sorted(tmp.iterdir(), key=lambda f: f.name == last):
            if item.is_dir():
                shutil.rmtree(out / item.name, ignore_errors=True)
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


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
