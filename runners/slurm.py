"""Executors for sweeps: submitit on a Slurm cluster or on this machine, and what the scheduler says.

``ExecutorSettings`` holds everything about *where* cells run (partition, time, GPUs, concurrency cap, ...);
it comes from defaults, then a config file (JSON or TOML, same names), then the command line.
``make_executor`` turns it into a ``submitit.AutoExecutor`` with an explicit cluster (``"slurm"`` or
``"local"``: AutoExecutor would pick Slurm whenever ``srun`` is on PATH).
``slurm_states`` / ``local_process_alive`` tell the sweep status what happened to a submitted job.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXECUTORS = ("local", "slurm")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ExecutorSettings:
    """Where and how the cells of a sweep run. Names are those of the CLI (``--gpus-per-task`` -> gpus_per_task)."""

    executor: str = "local"  # "local" | "slurm"
    partition: str | None = None
    time: str = "60"  # per-attempt time limit: minutes, or [D-]HH:MM[:SS]
    gpus_per_task: int = 0  # GPUs per cell (one process each: DDP when > 1)
    procs_per_task: int | None = None  # processes per cell; default max(1, gpus_per_task); >1 on CPU: gloo DDP
    cpus_per_task: int = 1  # CPUs per process; also torch's thread count in the job
    mem_gb: float | None = None  # memory per node of a cell
    max_parallel: int | None = None  # cells running at once (Slurm: array parallelism; local: default 1)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    signal_delay_s: int | None = None  # USR2 this long before the time limit (default: 90, or 30 when time < 10 min)
    max_timeouts: int = 3  # requeues after hitting the time limit (preemptions are always requeued)
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load, venv ...)
    additional: dict[str, Any] = field(default_factory=dict)  # further sbatch options, e.g. {"reservation": "x"}
    job_name: str = "dgss-sweep"

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def merged(self, overrides: dict[str, Any]) -> "ExecutorSettings":
        """A copy with the non-None ``overrides`` applied (names with '-' or '_'); unknown names are errors."""
        changes = {}
        for key, value in overrides.items():
            name = key.replace("-", "_")
            if name not in self.field_names():
                raise ValueError(f"unknown executor setting {key!r}; valid: {', '.join(self.field_names())}")
            if value is not None:
                changes[name] = value
        out = dataclasses.replace(self, **changes)
        out.validate()
        return out

    def validate(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        timeout_minutes(self.time)
        if self.gpus_per_task < 0 or self.cpus_per_task < 1:
            raise ValueError("gpus_per_task must be >= 0 and cpus_per_task >= 1")
        if self.procs_per_task is not None and self.procs_per_task < 1:
            raise ValueError("procs_per_task must be >= 1")
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ValueError("max_parallel must be >= 1")
        if not isinstance(self.setup, list) or not isinstance(self.additional, dict):
            raise ValueError("setup must be a list of shell lines and additional a table of sbatch options")

    @property
    def procs(self) -> int:
        return self.procs_per_task or max(1, self.gpus_per_task)

    @property
    def timeout_min(self) -> int:
        return timeout_minutes(self.time)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_settings_file(path: str | Path) -> dict[str, Any]:
    """Executor settings from a JSON or TOML file (a flat table; an optional [slurm] / "slurm" section)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"executor config file {path} does not exist (expected JSON or TOML)")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    elif path.suffix.lower() == ".toml":
        data = tomllib.loads(text)
    else:
        raise ValueError(f"executor config file {path}: use a .json or .toml file")
    if not isinstance(data, dict):
        raise ValueError(f"executor config file {path}: expected a table of settings")
    if isinstance(data.get("slurm"), dict):
        data = {**{k: v for k, v in data.items() if k != "slurm"}, **data["slurm"]}
    ExecutorSettings().merged(data)  # validates names and values, with the file named in the error
    return data


_TIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?$")


def timeout_minutes(value: str | int) -> int:
    """'90' -> 90, '1:30:00' -> 90, '2-00:00' -> 2880 (minutes, rounded up)."""
    text = str(value).strip()
    if text.isdigit():
        minutes = int(text)
    else:
        m = _TIME.match(text)
        if not m:
            raise ValueError(f"time limit {value!r}: use minutes or [D-]HH:MM[:SS]")
        days, hours, mins, secs = (int(g) if g else 0 for g in m.groups())
        minutes = days * 1440 + hours * 60 + mins + (1 if secs else 0)
    if minutes < 1:
        raise ValueError(f"time limit {value!r} must be at least one minute")
    return minutes


def python_path_setup() -> str:
    """Shell line that makes this checkout importable in the job (the job unpickles ``runners.sweep``)."""
    return f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"


def make_executor(settings: ExecutorSettings, folder: Path, *, num_cells: int):
    """A submitit executor for one submission; ``folder`` gets one subfolder per job (``%j``)."""
    import submitit

    cluster = settings.executor
    executor = submitit.AutoExecutor(folder=str(Path(folder) / "%j"), cluster=cluster,
                                     slurm_max_num_timeout=settings.max_timeouts,
                                     local_max_num_timeout=settings.max_timeouts)
    timeout = settings.timeout_min
    delay = settings.signal_delay_s
    if delay is None:
        # submitit's default is 90 s and Slurm may signal up to 60 s early: short limits need less
        delay = 90 if timeout >= 10 else 30
    params: dict[str, Any] = dict(
        timeout_min=timeout, tasks_per_node=settings.procs, cpus_per_task=settings.cpus_per_task,
        nodes=1, name=settings.job_name,
    )
    if settings.gpus_per_task:
        params["gpus_per_node"] = settings.gpus_per_task
    if settings.mem_gb is not None:
        params["mem_gb"] = settings.mem_gb
    setup = [python_path_setup(), *settings.setup]
    if cluster == "slurm":
        params.update(
            slurm_partition=settings.partition, slurm_signal_delay_s=delay,
            slurm_array_parallelism=settings.max_parallel or max(1, num_cells),
            slurm_setup=setup,
            # keep the log of every attempt (a requeued job reuses its log files)
            slurm_additional_parameters={"open-mode": "append", **settings.additional},
        )
        for name in ("account", "qos", "constraint", "exclude"):
            if getattr(settings, name):
                params[f"slurm_{name}"] = getattr(settings, name)
    else:
        if not settings.gpus_per_task:
            # submitit's local executor hides every GPU when gpus_per_node is 0: let the cells see what this
            # shell sees (a laptop's GPU), as a plain `python -m runners.run` would
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            setup.insert(0, "unset CUDA_VISIBLE_DEVICES" if visible is None
                         else f"export CUDA_VISIBLE_DEVICES={shlex.quote(visible)}")
        params.update(local_setup=setup)  # the local controller signals 30 s before the limit
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


# ------------------------------------------------------------------------------------------ scheduler state
LIVE_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending", "RESV_DEL_HOLD": "pending", "SUSPENDED": "pending", "STOPPED": "pending",
    "RESIZING": "running", "RUNNING": "running", "COMPLETING": "running", "SIGNALING": "running",
    "STAGE_OUT": "running",
}


def slurm_available(timeout_s: float = 5.0) -> tuple[bool, str]:
    """(True, "") when sinfo answers within ``timeout_s``; else (False, why)."""
    if shutil.which("sinfo") is None:
        return False, "sinfo is not on PATH (no Slurm client installed)"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"sinfo did not answer within {timeout_s:g} s (is slurmctld running?)"
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"sinfo failed: {exc}"
    if proc.returncode != 0:
        return False, f"sinfo failed: {(proc.stderr or proc.stdout).strip()[:300]}"
    if not proc.stdout.strip():
        return False, "sinfo lists no partition"
    return True, ""


def _run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None


def slurm_states(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Per job id (``123`` or array task ``123_4``): ``{"state": pending|running|ended|unknown, "slurm": ...}``.

    Live jobs come from ``squeue`` (works without accounting); for ended jobs ``sacct`` gives the final
    state (CANCELLED, TIMEOUT, FAILED, ...) when accounting is on. Jobs neither lists are ``ended``.
    """
    wanted = set(job_ids)
    out: dict[str, dict[str, str]] = {}
    if not wanted:
        return out
    user = os.environ.get("USER") or _whoami()
    proc = _run(["squeue", "-h", "-r", "-u", user, "-o", "%i|%T|%r"])
    if proc is None or proc.returncode != 0:
        reason = (proc.stderr.strip() if proc is not None else "squeue could not run")[:300]
        return {j: {"state": "unknown", "slurm": "", "detail": f"squeue failed: {reason}"} for j in wanted}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0] in wanted:
            state = parts[1].split()[0]
            out[parts[0]] = {"state": LIVE_STATES.get(state, "running"), "slurm": state,
                             "detail": parts[2] if len(parts) > 2 and parts[2] != "None" else ""}
    ended = sorted(wanted - set(out))
    if ended:
        accounting = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j", ",".join(ended)])
        final: dict[str, tuple[str, str]] = {}
        if accounting is not None and accounting.returncode == 0:
            for line in accounting.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) >= 3:
                    final[parts[0]] = (parts[1], parts[2])
        for job in ended:
            state, code = final.get(job, ("", ""))
            if state.split(" ")[0] in LIVE_STATES:  # accounting lags the controller by ~1 s
                state = ""
            out[job] = {"state": "ended", "slurm": state, "detail": f"exit code {code}" if code else ""}
    return out


def _whoami() -> str:
    import getpass

    return getpass.getuser()


def local_process_alive(pid: int | str) -> bool:
    """True when ``pid`` is a live submitit local controller (not a zombie, not a recycled pid)."""
    try:
        pid = int(pid)
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, ValueError, IndexError):
        return _pid_exists_portable(pid)
    return "submitit" in cmdline


def _pid_exists_portable(pid: Any) -> bool:
    if sys.platform.startswith("linux"):
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True
