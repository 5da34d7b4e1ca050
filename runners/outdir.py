"""Guarded run folders: one live run per folder, nothing computed is ever overwritten.

``check_run_folder(out, resume=..., force=...)`` decides, before anything is built or written, what a run
may do with its folder; ``open_run_folder`` then takes the lock:

- a lock ``<out>/run.lock`` (host, pid, Slurm job) held by a live run: refused (exit 2);
- a finished run (``result.json``): reported and skipped (``None``) unless ``--force``;
- a started run (spec, checkpoint, training log or evaluation files) without ``--resume``: refused, naming
  ``--resume`` and ``--force``;
- ``--force`` moves the old files to ``<out>/superseded/<time>/`` (never deletes them) and starts over.

A lock whose process is gone (same host, pid dead) or that belongs to this Slurm job (a requeued job
resuming on another node) is stale and taken over.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from runners.preflight import UserError
from runners.records import RECORD_FILE

LOCK_FILE = "run.lock"
SUPERSEDED_DIR = "superseded"
STARTED_MARKERS = ("spec.json", "train_log.jsonl", "checkpoints", "eval", "model_final.pt")
"""Files or folders whose presence means a run has started in the folder."""


def _slurm_job() -> str | None:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@dataclass
class RunLock:
    """The lock of a live run on ``out``; a context manager that removes it (only if still its own)."""

    path: Path
    owner: dict[str, Any]

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == self.owner["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": _slurm_job(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv}


def lock_is_live(owner: dict[str, Any]) -> bool:
    """Whether the run that wrote the lock may still be running (see the module docstring)."""
    mine = _slurm_job()
    if mine and owner.get("slurm_job") == mine:
        return False  # this very Slurm job, requeued: its previous process is gone
    if owner.get("host") == socket.gethostname():
        return owner.get("pid") != os.getpid() and _pid_alive(int(owner.get("pid", -1)))
    return True  # another host: assume live (the message says how to clear it)


def _read_lock(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def take_lock(out: Path, log: Callable[[str], None] = print) -> RunLock:
    """Create ``<out>/run.lock`` atomically, taking over a stale one; a live one is a :class:`UserError`."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    owner = lock_owner()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _read_lock(path)
            if held and lock_is_live(held):
                raise UserError(f"another run is using this folder (host {held.get('host')}, pid {held.get('pid')}, "
                                f"since {held.get('started')})", out,
                                f"wait for it, or pass another --out; if that run is dead, delete {path}") from None
            log(f"taking over the stale lock of host {held.get('host')}, pid {held.get('pid')} ({path})")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        return RunLock(path, owner)
    raise UserError("cannot take the run folder's lock", path, "delete the lock file if no run uses the folder")


def started_files(out: Path) -> list[str]:
    return [name for name in STARTED_MARKERS if (out / name).exists()]


def supersede(out: Path) -> Path:
    """Move every file of ``out`` (but the lock and older superseded runs) to ``out/superseded/<time>/``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest = out / SUPERSEDED_DIR / stamp
    dest.mkdir(parents=True, exist_ok=False)
    for entry in out.iterdir():
        if entry.name not in (LOCK_FILE, SUPERSEDED_DIR):
            entry.rename(dest / entry.name)
    return dest


def check_run_folder(out: Path, *, resume: bool, force: bool, log: Callable[[str], None] = print) -> bool:
    """Whether a run may go on in ``out`` (False: it is finished, skip it); a live lock, or a started run
    without ``--resume``/``--force``, is a :class:`UserError`. Reads only: nothing is written."""
    out = Path(out)
    held = _read_lock(out / LOCK_FILE) if (out / LOCK_FILE).is_file() else {}
    if held and lock_is_live(held):
        raise UserError(f"another run is using this folder (host {held.get('host')}, pid {held.get('pid')}, "
                        f"since {held.get('started')})", out,
                        f"wait for it, or pass another --out; if that run is dead, delete {out / LOCK_FILE}")
    record = out / RECORD_FILE
    if record.is_file() and not force:
        log(f"already finished: {record} (nothing to do; --force runs it again, keeping the old files under "
            f"{out / SUPERSEDED_DIR}/)")
        return False
    started = started_files(out)
    if started and not (resume or force):
        raise UserError(f"the run folder holds a started run ({', '.join(started)})", out,
                        "continue it with --resume, or start over with --force (the old files are kept under "
                        f"{out / SUPERSEDED_DIR}/)")
    return True


def open_run_folder(out: Path, *, force: bool, log: Callable[[str], None] = print) -> RunLock:
    """Take the folder's lock, then with ``force`` move a previous run's files aside (``supersede``)."""
    out = Path(out)
    lock = take_lock(out, log)
    if force and (started_files(out) or (out / RECORD_FILE).is_file()):
        dest = supersede(out)
        log(f"--force: the previous run's files were moved to {dest}")
    return lock
