"""Atomic writes and clean stops: a crash, a kill or Ctrl-C never leaves a half-written file or model
directory behind, and never deletes a file the command did not write."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path


class Interrupted(RuntimeError):
    """The command stopped early (SIGINT/SIGTERM, `ray job stop`) after saving what it had; exit code 130."""


def _on_sigterm(signum, frame) -> None:
    """SIGTERM as Ctrl-C: through a SIGINT handler someone installed (Tune's stops its trials cleanly), else as a
    KeyboardInterrupt raised right here, which also works where SIGINT is ignored (every `cmd &` of a script)."""
    if callable(signal.getsignal(signal.SIGINT)) and signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.raise_signal(signal.SIGINT)
    else:
        raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM (what `ray job stop`, `kill` and schedulers send) is handled like Ctrl-C, so the same
    `except KeyboardInterrupt` saves the work."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def existing_ancestor(path: Path) -> Path:
    """`path` itself if it exists, else its nearest ancestor that does (where a new file under `path` would land)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: str | Path, what: str, directory: bool = False) -> None:
    """Before any work: `path` can be written (its nearest existing ancestor is a writable directory, and it
    is not a directory where a file is wanted or the other way round)."""
    path = Path(path).expanduser().absolute()
    if path.exists() and path.is_dir() != directory:
        raise ValueError(f"{what}={path} is {'a file' if path.is_file() else 'a directory'}, not "
                         f"{'a directory' if directory else 'a file'}")
    ancestor = existing_ancestor(path if directory else path.parent)  # a file is written beside itself, renamed
    if not ancestor.is_dir():
        raise ValueError(f"{what}={path} cannot be created: {ancestor} is a file")
    try:  # by doing it: permission bits say nothing of /proc, read-only mounts or quotas
        probe = ancestor / f".unmask-write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"{what}={path} cannot be written: {ancestor} refuses a new file ({err.strerror})") from None


def check_hub(repo_id: str, what: str) -> None:
    """A hub id that is not in the Hugging Face cache needs the hub: unreachable, that is one line at once (the hub
    client would retry for minutes and then blame the files)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return  # offline mode: the cache answers, or the client says at once that it is not there
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return
    except Exception:  # noqa: BLE001 - not a valid repo id: the loader says so in its own words
        return
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        raise ValueError(f"cannot reach the hub for {what} {repo_id!r} (offline?): give a local directory, or put it "
                         "in the Hugging Face cache first (HF_HUB_OFFLINE=1 then reads it from there)") from None


HUB_TIMEOUT_S = 5.0


def is_local_path(path: str) -> bool:
    """A filesystem path rather than a hub id such as `GSAI-ML/LLaDA-8B-Instruct`."""
    return path.startswith(("/", "./", "../", "~")) or Path(path).exists()


class DiskFull(OSError):
    """A write that found no space (or hit the file-size limit): one line naming the path and what it needed."""


def disk_full(err: OSError, path: Path, needed: int = 0) -> OSError:
    """`err` as DiskFull's one line when it is a full disk (ENOSPC, EDQUOT, EFBIG), else `err` itself."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return err
    try:
        free = shutil.disk_usage(next(p for p in [path, *path.parents] if p.exists())).free
    except (OSError, StopIteration):
        free = -1
    wanted = mib(needed) if needed else "more"
    left = f"{mib(free)} free" if free >= 0 else "its free space unknown"
    full = DiskFull(f"no space left to write {path}: it needs {wanted}, the disk has {left}; the files written "
                    "before are kept")
    full.errno = err.errno
    return full


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a temp file beside `path` and rename over it; a full disk is DiskFull's one line, and the old file
    and no temp file remain."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    payload = data.encode() if isinstance(data, str) else data
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    except OSError as err:
        raise disk_full(err, path, len(payload)) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def publish_dir(out: Path, fill: Callable[[Path], None], last: str = "") -> Path:
    """Build a directory with `fill(tmp)` next to `out`, then publish it: a new `out` appears whole (one
    rename); into an existing `out` each file `fill` wrote is moved over its old version (each atomically,
    `last` after all the others) and every other file of `out` is left alone. A full disk while filling is
    DiskFull's one line; the temp folder is removed and `out` is as it was."""
    out = Path(out).resolve()  # `.` has no name to put a temp folder beside
    if not out.exists():
        return replace_dir(out, fill)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        filled(fill, tmp, out)
        for item in sorted(tmp.iterdir(), key=lambda f: f.name == last):
            if item.is_dir():
                shutil.rmtree(out / item.name, ignore_errors=True)
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def replace_dir(out: Path, fill: Callable[[Path], None]) -> Path:
    """Build a directory with `fill(tmp)` next to `out`, then swap it in; the previous `out` stays whole
    until the new one is complete (and stays as it was when the disk fills up: DiskFull)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.with_name(out.name + ".tmp"), out.with_name(out.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        filled(fill, tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def filled(fill: Callable[[Path], None], tmp: Path, out: Path) -> None:
    """fill(tmp), its full disk (also as the libraries that write model files report it) as DiskFull."""
    try:
        fill(tmp)
    except OSError as err:
        raise disk_full(err, out) from None
    except Exception as err:  # safetensors and friends wrap the OS error in their own
        text = str(err)
        if any(sign in text for sign in ("No space left", "ENOSPC", "File too large", "Disk quota")):
            raise disk_full(OSError(errno.ENOSPC, text), out) from None
        raise
