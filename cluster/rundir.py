"""Run directories: a new run never overwrites one, a resumed run keeps its own config, a run that failed
before it began leaves nothing behind, and `resume=` only reads what this user's unmask wrote.

Resuming restores Tune's and RLlib's state, which unpickles files of the run directory (tuner.pkl, the
experiment state, checkpoints' state.pkl and class_and_ctor_args.pkl): a run directory from someone else
could run their code, and its config.yaml could ask for remote code. Every time `unmask train` or `unmask sweep`
stops, it seals the directory: an HMAC-SHA256 of each of those files and of config.yaml under a key only this user
can read (`~/.config/unmask/run-key`, or the file
UNMASK_RUN_KEY names), in run_dir/unmask-seal.json. `resume=` refuses a directory whose files do not match
their seal (`resume_unverified=true` resumes anyway: only for a directory you trust).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from unmask.envs.files import write_atomic
from unmask.envs.structured import load_yaml, to_dict, typed, upgrade

RESERVE = ".unmask-reserve"  # space kept for the seal and the error report of a run whose disk fills up
RESERVE_BYTES = 1 << 20
RUN_FILES = ("config.yaml", "tune", "checkpoints", "trajectories", "unmask-seal.json", RESERVE)  # what a run writes
RUN_SPECIFIC = ("resume", "out_dir", "ray_address", "resume_unverified")  # may differ in a continuation
SEAL = "unmask-seal.json"


def claim_run_dir(cfg: Any, schema: type) -> Path:
    """The run directory of `cfg` (the resumed one with `resume`). A new run needs a directory that holds no
    run; a resumed one needs its config.yaml and tune/, must agree with the saved config on every key, and
    its pickled state must match its seal."""
    run_dir = Path(cfg.resume or cfg.out_dir).resolve()
    saved_file = run_dir / "config.yaml"
    run_key()  # the run will be sealed with it when it stops: a bad key is an error now, not after the training
    if not cfg.resume:
        if saved_file.exists():
            raise ValueError(f"out_dir {run_dir} already holds a run: choose a new out_dir (or resume={run_dir})")
        return run_dir
    if not saved_file.is_file() or not (run_dir / "tune").is_dir():
        raise ValueError(f"resume={cfg.resume}: no run to resume there (config.yaml and tune/ are missing)")
    saved = _flat(to_dict(typed(schema, upgrade(schema, load_yaml(saved_file, f"resume={cfg.resume}"))[0])))
    for key, value in _flat(to_dict(cfg)).items():
        if key not in RUN_SPECIFIC and saved.get(key) != value:
            raise ValueError(f"resume={cfg.resume} was started with {key}={saved.get(key)!r}, not {value!r}: "
                             "a run resumes with its own config")
    if not cfg.resume_unverified:
        verify_seal(run_dir)
    damaged = damage(run_dir)
    if damaged:
        raise ValueError(f"resume={cfg.resume}: the run cannot be resumed: {damaged}; start it again (its out_dir "
                         "may be reused once config.yaml is removed)")
    return run_dir


def damage(run_dir: Path) -> str:
    """What keeps Tune from resuming a run directory ("" if nothing): its tuner state or its newest experiment state
    unreadable, as a disk that filled up while Tune wrote them leaves them."""
    tune = run_dir / "tune"
    tuner = tune / "tuner.pkl"
    if not tuner.is_file() or tuner.stat().st_size == 0:
        return "Tune's tuner.pkl is missing or empty"
    states = sorted(tune.glob("experiment_state-*.json"))
    if not states:
        return "Tune's experiment state is missing"
    try:
        json.loads(states[-1].read_text())
    except (OSError, ValueError):
        return f"Tune's experiment state {states[-1].name} is cut short"
    return ""


def forget_run(run_dir: Path, remove_dir: bool) -> None:
    """Remove what a run wrote (and the directory, if the run made it and nothing else is in it)."""
    for name in RUN_FILES:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    if remove_dir and not any(run_dir.iterdir()):
        run_dir.rmdir()


def reserve(run_dir: Path) -> None:
    """Hold RESERVE_BYTES of the run directory's disk: when the disk fills up during the run, releasing them lets the
    seal (and the error report) still be written, so the run stays resumable without resume_unverified."""
    try:
        with open(run_dir / RESERVE, "wb") as fh:
            os.posix_fallocate(fh.fileno(), 0, RESERVE_BYTES)
    except OSError:  # no room even now, or a filesystem without fallocate: nothing held
        (run_dir / RESERVE).unlink(missing_ok=True)


def release(run_dir: Path) -> None:
    (run_dir / RESERVE).unlink(missing_ok=True)


# ---- the seal ------------------------------------------------------------------------------------------
def unpickled_files(run_dir: Path) -> list[Path]:
    """What a resume reads that can run code or change what runs: every .pkl under tune/, Tune's experiment and
    search state (JSON that embeds pickles), and config.yaml (e.g. its rollout.trust_remote_code)."""
    tune = run_dir / "tune"
    found = list(tune.rglob("*.pkl")) + list(tune.glob("experiment_state-*.json")) + list(tune.glob("*-state-*.json"))
    config = run_dir / "config.yaml"
    return sorted(set(found)) + ([config] if config.is_file() else [])


def run_key() -> bytes:
    """This user's key (made on first use, readable by the user alone); a path that holds no key is a one-line error,
    raised before any work (claim_run_dir reads it first)."""
    path = Path(os.environ.get("UNMASK_RUN_KEY", Path.home() / ".config" / "unmask" / "run-key"))
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError, UnicodeDecodeError):
        key = b""
    if len(key) < 16:
        raise ValueError(f"the run key {path} (UNMASK_RUN_KEY, or ~/.config/unmask/run-key) is not a key: a file of "
                         "at least 32 hex digits (remove it and a new one is made)")
    return key


def _mac(key: bytes, path: Path) -> str:
    return hmac.new(key, path.read_bytes(), hashlib.sha256).hexdigest()


def seal(run_dir: Path) -> None:
    """Record the MAC of every file resuming would unpickle (called whenever a run stops)."""
    key = run_key()
    macs = {str(f.relative_to(run_dir)): _mac(key, f) for f in unpickled_files(run_dir)}
    write_atomic(run_dir / SEAL, json.dumps({"hmac-sha256": macs}, indent=1) + "\n")


def verify_seal(run_dir: Path) -> None:
    hint = "resume_unverified=true resumes it anyway (it unpickles its files: only for a directory you trust)"
    try:
        recorded = json.loads((run_dir / SEAL).read_text())["hmac-sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"resume={run_dir}: no valid {SEAL} (not stopped by this user's unmask, or killed "
                         f"before it could seal the run); {hint}") from None
    key = run_key()
    for f in unpickled_files(run_dir):
        name = str(f.relative_to(run_dir))
        if not hmac.compare_digest(recorded.get(name, ""), _mac(key, f)):
            raise ValueError(f"resume={run_dir}: {name} is not the file this user's unmask wrote (it was changed, "
                             f"or the run is someone else's); {hint}")


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "grid":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
