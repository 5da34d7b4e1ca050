"""Result records: one JSON per run with the full resolved spec, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from runners.preflight import disk_full_error, is_disk_full

RECORD_SCHEMA = 1
RECORD_FILE = "result.json"
PACKAGES = ("torch", "torchvision", "timm", "open_clip_torch", "numpy", "pillow", "opencv-python-headless",
            "submitit", "scipy")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def content_hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to ``<path>.tmp<pid>``, then rename: ``path`` is the old or the new file, never a torn
    one. A failed write leaves no temporary file; a full disk is a one-line
    :class:`runners.preflight.DiskFullError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        write(tmp)
    except BaseException as exc:
        full = is_disk_full(exc, path.parent)  # measured while the partial file still takes its space
        tmp.unlink(missing_ok=True)
        if full:
            raise disk_full_error(path, exc) from exc
        raise
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def git_revision(repo: Path | None = None) -> dict[str, Any]:
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": commit or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment(device: str | None = None) -> dict[str, Any]:
    """Package versions, git commit, interpreter, host and accelerator."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    env: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "host": socket.gethostname(),
        "packages": versions, "git": git_revision(), "device": device,
    }
    try:
        import torch

        env["cuda"] = torch.version.cuda
        env["cpu_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name(0)
            env["gpu_count"] = torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        pass
    return env


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_records(root: Path) -> list[dict[str, Any]]:
    """Every result record under ``root`` (recursively), oldest first; unreadable files are reported."""
    records = []
    for path in sorted(Path(root).rglob(RECORD_FILE)):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"warning: skipping unreadable result record {path}: {exc}", file=sys.stderr)
            continue
        if record.get("schema") != RECORD_SCHEMA:
            print(f"warning: skipping {path}: record schema {record.get('schema')} != {RECORD_SCHEMA}",
                  file=sys.stderr)
            continue
        record["_path"] = str(path)
        records.append(record)
    return records
