"""Sweeps: every method x protocol x eval variant x backbone x seed as one command, locally or on Slurm.

    python -m runners.sweep --methods rein,tqdm --protocols gta2cbm,city2bm --seeds 3 \\
        --executor slurm --partition gpu --gpus-per-task 1 --time 12:00:00 --max-parallel 8 --out runs/sweeps/main
    python -m runners.sweep status runs/sweeps/main [--resubmit-failed] [--wait]

A *cell* is one ``runners.run`` invocation. Its key is the run's spec hash (``runners.run.resolve``), the
same key its result record carries, so a cell whose record exists is skipped and re-running a sweep
command only submits what is missing. The sweep folder holds:

- ``manifest.json``: cell key -> run folder, ``runners.run`` arguments, labels, and every submission
  (executor, job id, submitit folder, stdout/stderr log paths);
- ``runs/<run name>/``: the run folders (``result.json``, ``checkpoints/last.pt``, ``train_log.jsonl`` ...);
- ``submitit/<submission>/<job id>/``: submitit's pickles and the per-task logs (a fresh folder per
  submission, so a Slurm state reset that reuses job ids never finds a stale result).

Slurm cells are one job array per submission with a concurrency cap (``--max-parallel``); the command
submits and exits (``--wait`` blocks). A preempted or timed-out cell is requeued and resumes from
``<run>/checkpoints/last.pt`` (``CellJob.checkpoint``). ``status`` shows each cell as pending, running,
done or failed (with the error's last lines); ``--resubmit-failed`` resubmits only failed cells, which
resume from their last checkpoint. The local executor runs the same jobs in subprocesses on this
machine, ``--max-parallel`` at a time (default 1), and returns when they are done.

``--gpus-per-task N`` (or ``--procs-per-task N``) trains each cell with N processes (DDP, one per GPU)
on the recipe's global batch; see ``runners.distributed``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import itertools
import json
import os
import pickle
import secrets
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from submitit.helpers import Checkpointable, DelayedSubmission

from runners.options import UsageError
from runners.records import RECORD_FILE, RECORD_SCHEMA, content_hash, now_iso, write_json_atomic
from runners.slurm import (ExecutorSettings, load_settings_file, local_process_alive, make_executor,
                           slurm_states)

MANIFEST_FILE = "manifest.json"
MANIFEST_SCHEMA = 1
STATES = ("done", "running", "pending", "failed", "unsubmitted", "unknown")
ERROR_LINES = 12  # lines of a failed cell's error shown by `status`


# ============================================================================================== cells
@dataclass
class Cell:
    """One run of the sweep. ``argv`` are ``runners.run`` arguments without ``--out``."""

    key: str  # the run's spec hash
    name: str  # run folder name (runs/<name>)
    argv: list[str]
    labels: dict[str, Any]
    kind: str = "run"  # "run": runners.run; "selftest": SelfTestJob (tests of the sweep machinery)

    @property
    def run_rel(self) -> str:
        return f"runs/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "run_dir": self.run_rel, "argv": self.argv, "labels": self.labels,
                "kind": self.kind}

    @classmethod
    def from_manifest(cls, key: str, entry: dict[str, Any]) -> "Cell":
        return cls(key, entry["name"], list(entry["argv"]), dict(entry["labels"]), entry.get("kind", "run"))


@dataclass
class Grid:
    """What a sweep command asks for. Empty ``backbones`` = each method's paper backbone."""

    methods: list[str]
    protocols: list[str]
    variants: list[str] = field(default_factory=lambda: ["default"])  # [] = the profile's (runners.run)
    backbones: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])  # [] = the profile's seed (runners.run)
    run_args: list[str] = field(default_factory=list)  # passed to every runners.run (--iters 4 ...)
    kind: str = "run"


def parse_seeds(text: str) -> list[int]:
    """``3`` -> [0, 1, 2]; ``0,4,7`` -> [0, 4, 7]; ``5:8`` -> [5, 6, 7]."""
    text = text.strip()
    try:
        if text.isdigit():
            return list(range(int(text)))
        if ":" in text and "," not in text:
            lo, hi = text.split(":")
            return list(range(int(lo), int(hi)))
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds {text!r}: use a count (3), a list (0,4,7) or a range (5:8)") from None


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def plan_cells(grid: Grid, *, log: Callable[[str], None] = print) -> list[Cell]:
    """Expand the grid into cells, each keyed by the spec hash that ``runners.run`` would record."""
    if grid.kind == "selftest":
        return _plan_selftest(grid)
    from benchmarks.protocols import list_protocols, list_variants
    from methods.registry import get_method_class, list_methods
    from runners import run as run_mod

    methods = list_methods() if grid.methods == ["all"] else grid.methods
    protocols = list_protocols() if grid.protocols == ["all"] else grid.protocols
    for m in methods:
        if m not in list_methods():
            raise SystemExit(f"error: unknown method {m!r}; methods: {', '.join(list_methods())}")
    for p in protocols:
        if p not in list_protocols():
            raise SystemExit(f"error: unknown protocol {p!r}; protocols: {', '.join(list_protocols())}")
        for v in grid.variants:
            if v not in list_variants(p):
                raise SystemExit(f"error: protocol {p} has no evaluation variant {v!r}; "
                                 f"variants: {', '.join(list_variants(p))}")
    parser = run_mod.build_parser()
    once = log_once(log)
    variants: list[str | None] = list(grid.variants) or [None]  # None: the profile's variant
    seeds: list[int | None] = list(grid.seeds) or [None]  # None: the profile's seed

    cells: dict[str, Cell] = {}
    for method in methods:
        supported = get_method_class(method).backbones
        if grid.backbones == ["all"]:
            backbones = list(supported)
        elif grid.backbones:
            backbones = [b for b in grid.backbones if b in supported]
            if not backbones:
                raise SystemExit(f"error: {method} supports backbones {', '.join(supported)}; "
                                 f"none of {', '.join(grid.backbones)}")
        else:
            backbones = [supported[0]]
        for backbone, protocol, variant, seed in itertools.product(backbones, protocols, variants, seeds):
            argv = ["--method", method, "--backbone", backbone, "--protocol", protocol,
                    *(["--eval-variant", variant] if variant is not None else []),
                    *(["--seed", str(seed)] if seed is not None else []), *grid.run_args]
            try:
                cell = cell_from_argv(argv, parser, log=once)
            except UsageError as exc:  # its text is already "error: ..."
                raise SystemExit(str(exc)) from None
            cells.setdefault(cell.key, cell)
    return list(cells.values())


def log_once(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log``, but each distinct message only once (planning resolves many cells that say the same thing)."""
    seen: set[str] = set()

    def once(msg: str) -> None:
        if msg not in seen:
            seen.add(msg)
            log(msg)

    return once


def cell_from_argv(argv: list[str], parser: argparse.ArgumentParser | None = None, *,
                   log: Callable[[str], None] = print, **labels: Any) -> Cell:
    """The cell of one ``runners.run`` argument list, keyed by the spec hash it resolves to; ``labels`` are
    added to the cell's labels (e.g. ``released=<checkpoint id>``)."""
    from runners import run as run_mod

    args = (parser or run_mod.build_parser()).parse_args(argv)
    run = run_mod.resolve(args, log=log)
    argv = list(argv)
    if run.miniature and "--data-root" not in argv:
        argv += ["--data-root", str(run.data_root)]  # the jobs read exactly what was planned
    base = {"method": run.method_class.name, "backbone": run.backbone, "protocol": run.protocol.name,
            "variant": run.protocol.variant, "seed": run.seed, "miniature": run.miniature, "profile": run.profile}
    return Cell(run.spec_hash, run.out.name, argv, {**base, **labels})


def _plan_selftest(grid: Grid) -> list[Cell]:
    cells: dict[str, Cell] = {}
    backbones = grid.backbones or ["tiny"]
    for method, backbone, protocol, variant, seed in itertools.product(
            grid.methods, backbones, grid.protocols, grid.variants or ["default"], grid.seeds or [0]):
        argv = ["--method", method, "--backbone", backbone, "--protocol", protocol, "--eval-variant", variant,
                "--seed", str(seed), *grid.run_args]
        key = content_hash({"selftest": argv})
        labels = {"method": method, "backbone": backbone, "protocol": protocol, "variant": variant, "seed": seed,
                  "miniature": True}
        cells.setdefault(key, Cell(key, f"{method}-{protocol}-{variant}-s{seed}-{key[:8]}", argv, labels,
                                   kind="selftest"))
    return list(cells.values())


# ============================================================================================== jobs
def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


class CellJob(Checkpointable):
    """The submitit job of one cell: ``runners.run`` in-process (every DDP rank runs it).

    On preemption or timeout submitit calls ``checkpoint``, which requeues the same cell with
    ``resume=True``: the Trainer continues from ``<run>/checkpoints/last.pt``, never from scratch.
    """

    def __init__(self, key: str, threads: int | None = None):
        self.key = key
        self.threads = threads

    def __call__(self, argv: Sequence[str], resume: bool = False) -> dict[str, Any]:
        from runners import distributed  # imports torch: not at module level (cheap `status`, cheap selftests)

        _set_threads(self.threads)
        info = distributed.init_from_environment()
        print(f"[sweep] cell {self.key}: {'resuming' if resume else 'starting'} at {now_iso()} "
              f"(rank {info.rank} of {info.world_size}, pid {os.getpid()})", flush=True)
        try:
            return self._run(list(argv), resume, info)
        finally:
            distributed.cleanup()

    def _run(self, argv: list[str], resume: bool, info) -> dict[str, Any]:
        from runners import distributed, run as run_mod

        args = run_mod.build_parser().parse_args(argv + (["--resume"] if resume else []))
        run_mod.check_arguments(args)
        with distributed.main_first():
            run = run_mod.resolve(args)
        if run.spec_hash != self.key:
            raise RuntimeError(
                f"cell {self.key}: the run now resolves to spec hash {run.spec_hash} (the code or a recipe changed "
                "since the sweep was planned); re-run the sweep command to plan the new cells")
        record = run_mod.guarded_execute(run, args)  # preflight, run-folder lock; a bad cell fails alone
        if record is None:  # finished by an earlier attempt
            record = json.loads((run.out / RECORD_FILE).read_text())
        if not info.is_main:
            return {"key": self.key, "rank": info.rank}
        return {"key": self.key, "record": str(run.out / RECORD_FILE),
                "mean_miou": record.get("results", {}).get("mean_miou")}

    def checkpoint(self, argv: Sequence[str], resume: bool = False) -> DelayedSubmission:
        print(f"[sweep] cell {self.key}: preempted or timed out at {now_iso()}; requeued, it will resume "
              "from its last checkpoint", flush=True)
        return DelayedSubmission(self, list(argv), resume=True)


class SelfTestJob(CellJob):
    """A cheap stand-in for ``runners.run`` that exercises the sweep machinery (tests, cluster checks).

    It "trains" ``--iters`` iterations of ``--iter-seconds`` each, checkpointing after every one to
    ``<out>/checkpoints/last.pt`` (JSON), resumes from it like the Trainer (printing the same
    ``resuming from ... at iteration N`` line), and writes a result record keyed by the cell key with a
    metric that depends only on the seed. ``--fail-first`` fails the first attempt (``--fail-seed S``: only
    the cell of seed S); ``--fail`` every one.
    """

    def __call__(self, argv: Sequence[str], resume: bool = False) -> dict[str, Any]:  # no torch, no DDP
        print(f"[sweep] cell {self.key}: {'resuming' if resume else 'starting'} at {now_iso()} (pid {os.getpid()})",
              flush=True)
        return self._run(list(argv), resume, None)

    def _run(self, argv: list[str], resume: bool, info) -> dict[str, Any]:
        p = argparse.ArgumentParser(prog="selftest")
        for name in ("--method", "--backbone", "--protocol", "--eval-variant", "--out"):
            p.add_argument(name)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--iters", type=int, default=3)
        p.add_argument("--iter-seconds", type=float, default=0.1)
        p.add_argument("--fail-first", action="store_true")
        p.add_argument("--fail", action="store_true")
        p.add_argument("--fail-seed", type=int, default=None, help="--fail-first for this seed only")
        args, _ = p.parse_known_args(argv)
        out = Path(args.out)
        ckpt = out / "checkpoints" / "last.pt"
        start = 0
        if resume and ckpt.exists():
            start = json.loads(ckpt.read_text())["iteration"]
            print(f"resuming from {ckpt} at iteration {start}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        marker = out / ".selftest_failed_once"
        fail_first = args.fail_first or (args.fail_seed is not None and args.fail_seed == args.seed)
        if args.fail or (fail_first and not marker.exists()):
            marker.touch()
            raise RuntimeError(f"selftest: injected failure of cell {self.key}")
        for it in range(start, args.iters):
            time.sleep(args.iter_seconds)
            write_json_atomic(ckpt, {"iteration": it + 1, "key": self.key})
            print(f"iteration {it + 1}/{args.iters}", flush=True)
        record = {"schema": RECORD_SCHEMA, "run_id": out.name, "created": now_iso(), "spec_hash": self.key,
                  "method": args.method, "backbone": args.backbone, "protocol": args.protocol,
                  "eval_variant": args.eval_variant, "seed": args.seed, "miniature": True, "benchmark": "selftest",
                  "train": {"iterations": args.iters, "resumed_from": start or None},
                  "results": {"mean_miou": round(10 + (args.seed * 7919 % 97) / 10, 4)}}
        write_json_atomic(out / RECORD_FILE, record)
        return {"key": self.key, "record": str(out / RECORD_FILE), "mean_miou": record["results"]["mean_miou"]}


JOB_KINDS: dict[str, type[CellJob]] = {"run": CellJob, "selftest": SelfTestJob}


# ============================================================================================== manifest
def manifest_path(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / MANIFEST_FILE


def load_manifest(sweep_dir: Path) -> dict[str, Any]:
    path = manifest_path(sweep_dir)
    if not path.exists():
        return {"schema": MANIFEST_SCHEMA, "created": now_iso(), "invocations": [], "executor": {}, "cells": {}}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {path} is not valid JSON ({exc}); restore it or start a new sweep folder") from None
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise SystemExit(f"error: {path} has manifest schema {manifest.get('schema')}, expected {MANIFEST_SCHEMA}")
    return manifest


@contextlib.contextmanager
def edit_manifest(sweep_dir: Path):
    """Read-modify-write the manifest under an exclusive lock (several sweep commands may share a folder)."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = load_manifest(sweep_dir)
        yield manifest
        manifest["updated"] = now_iso()
        write_json_atomic(manifest_path(sweep_dir), manifest)


# ============================================================================================== state
@dataclass
class CellStatus:
    key: str
    name: str
    labels: dict[str, Any]
    state: str  # one of STATES
    executor: str | None = None
    job_id: str | None = None
    attempts: int = 0
    detail: str = ""  # scheduler state / reason, or the metric of a finished cell
    error: list[str] = field(default_factory=list)  # last lines of the error of a failed cell
    run_dir: str = ""
    stdout: str | None = None
    stderr: str | None = None
    mean_miou: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _record(sweep_dir: Path, entry: dict[str, Any], key: str) -> dict[str, Any] | None:
    path = Path(sweep_dir) / entry["run_dir"] / RECORD_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("spec_hash") == key else None


def _tail(path: str | Path | None, n: int = ERROR_LINES) -> list[str]:
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if ln.strip()][-n:]


def _result_pickle(sub: dict[str, Any], sweep_dir: Path) -> tuple[str, Any] | None:
    path = sub.get("result")
    if not path:
        return None
    path = Path(sweep_dir) / path
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as exc:  # a half-written or unreadable pickle: report it as such
        return ("error", f"unreadable submitit result {path}: {exc}")


def _abs(sweep_dir: Path, rel: str | None) -> str | None:
    return str(Path(sweep_dir) / rel) if rel else None


def cell_statuses(sweep_dir: Path, manifest: dict[str, Any] | None = None) -> list[CellStatus]:
    """State of every cell of the sweep: record first, then submitit's result, then the scheduler."""
    sweep_dir = Path(sweep_dir)
    manifest = manifest if manifest is not None else load_manifest(sweep_dir)
    statuses: list[CellStatus] = []
    slurm_jobs: list[str] = []
    for key, entry in manifest["cells"].items():
        subs = entry.get("submissions", [])
        st = CellStatus(key, entry["name"], entry["labels"], "unsubmitted", attempts=len(subs),
                        run_dir=str(sweep_dir / entry["run_dir"]))
        if subs:
            last = subs[-1]
            st.executor, st.job_id = last.get("executor"), last.get("job_id")
            st.stdout, st.stderr = _abs(sweep_dir, last.get("stdout")), _abs(sweep_dir, last.get("stderr"))
        record = _record(sweep_dir, entry, key)
        if record is not None:
            st.state = "done"
            st.mean_miou = record.get("results", {}).get("mean_miou")
            st.detail = f"mean mIoU {st.mean_miou:.2f}" if isinstance(st.mean_miou, (int, float)) else ""
        elif subs:
            st.state = "?"
            if st.executor == "slurm" and st.job_id:
                slurm_jobs.append(st.job_id)
        statuses.append(st)
    scheduler = slurm_states(slurm_jobs) if slurm_jobs else {}

    for st in statuses:
        if st.state != "?":
            continue
        entry = manifest["cells"][st.key]
        last = entry["submissions"][-1]
        result = _result_pickle(last, sweep_dir)
        if result is None:
            if st.executor == "slurm":
                info = scheduler.get(st.job_id or "", {"state": "unknown", "slurm": "", "detail": "not queried"})
                live, slurm_state, detail = info["state"], info["slurm"], info["detail"]
            elif st.job_id:  # local: the controller process
                live, slurm_state, detail = ("running" if local_process_alive(st.job_id) else "ended"), "", ""
            else:  # local, queued by a sweep process that has not started it yet
                scheduler_pid = last.get("scheduler_pid")
                live = "pending" if scheduler_pid and _pid_alive(scheduler_pid) else "ended"
                slurm_state, detail = "", "queued by the local sweep process"
                if live == "ended":
                    detail = "the local sweep process ended before starting this cell"
            if live in ("pending", "running", "unknown"):
                st.state = live
                st.detail = " ".join(x for x in (slurm_state, detail) if x)
                continue
            # ended: the record may have landed between our first look and the scheduler query
            record = _record(sweep_dir, entry, st.key)
            if record is not None:
                st.state, st.mean_miou = "done", record.get("results", {}).get("mean_miou")
                continue
            result = _result_pickle(last, sweep_dir)
            if result is None:
                st.state = "failed"
                how = f"Slurm state {slurm_state}" if slurm_state else "no scheduler record"
                st.detail = f"ended without a result ({how}{', ' + detail if detail else ''})"
                st.error = _tail(st.stderr) or _tail(st.stdout)
                continue
        status, value = result
        if status != "error":  # the record is written before the job returns: it may have just landed
            record = _record(sweep_dir, entry, st.key)
            if record is not None:
                st.state, st.mean_miou = "done", record.get("results", {}).get("mean_miou")
                continue
        st.state = "failed"
        if status == "error":
            st.detail = "the job raised an exception"
            st.error = [ln for ln in str(value).splitlines() if ln.strip()][-ERROR_LINES:]
        else:
            st.detail = "the job returned but wrote no result record with this key"
            st.error = _tail(st.stderr)
    return statuses


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def format_status(statuses: list[CellStatus], *, verbose_errors: bool = True) -> str:
    rows = [("state", "cell", "method", "backbone", "protocol", "variant", "seed", "job", "detail")]
    for st in statuses:
        lb = st.labels
        rows.append((st.state, st.key[:12], str(lb.get("method")), str(lb.get("backbone")), str(lb.get("protocol")),
                     str(lb.get("variant")), str(lb.get("seed")), str(st.job_id or "-"), st.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        if i == 0:
            lines.append("-" * len(lines[0]))
    if verbose_errors:
        for st in statuses:
            if st.state == "failed":
                lines.append("")
                lines.append(f"failed cell {st.key} ({st.name}), attempt {st.attempts}: {st.detail}")
                lines.extend("    " + ln for ln in st.error)
                if st.stderr:
                    lines.append(f"    logs: {st.stdout}  {st.stderr}")
    counts = {s: sum(st.state == s for st in statuses) for s in STATES}
    lines.append("")
    lines.append(f"{len(statuses)} cells: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)


# ============================================================================================== submission
def _job_for(cell: Cell, settings: ExecutorSettings) -> CellJob:
    return JOB_KINDS[cell.kind](cell.key, threads=settings.cpus_per_task)


def _rel(sweep_dir: Path, path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(sweep_dir).resolve()))
    except ValueError:
        return str(path)


def _submission_entry(sweep_dir: Path, job, settings: ExecutorSettings, folder: Path, resume: bool) -> dict:
    return {"executor": settings.executor, "job_id": str(job.job_id), "submitted": now_iso(), "resume": resume,
            "folder": _rel(sweep_dir, folder), "stdout": _rel(sweep_dir, job.paths.stdout),
            "stderr": _rel(sweep_dir, job.paths.stderr), "result": _rel(sweep_dir, job.paths.result_pickle)}


def submit_cells(sweep_dir: Path, cells: list[Cell], settings: ExecutorSettings, *, resume: bool,
                 log: Callable[[str], None] = print, poll_s: float = 0.5) -> list[CellStatus] | None:
    """Submit ``cells``. Slurm: one job array, returns at once (None). Local: runs them and returns statuses."""
    if not cells:
        return None
    sweep_dir = Path(sweep_dir).absolute()
    folder = sweep_dir / "submitit" / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    executor = make_executor(settings, folder, num_cells=len(cells))
    argvs = {c.key: c.argv + ["--out", str(sweep_dir / c.run_rel), "--no-progress"] for c in cells}
    with edit_manifest(sweep_dir) as manifest:
        if settings.executor == "local":
            manifest["executor"] = settings.to_dict()
        for c in cells:
            manifest["cells"].setdefault(c.key, {**c.to_dict(), "submissions": []})
            if settings.executor == "local":  # visible to `status` as pending until started
                manifest["cells"][c.key]["submissions"].append(
                    {"executor": "local", "job_id": None, "queued": now_iso(), "scheduler_pid": os.getpid(),
                     "resume": resume})
    if settings.executor == "slurm":
        try:
            with executor.batch():
                jobs = [executor.submit(_job_for(c, settings), argvs[c.key], resume) for c in cells]
        except Exception as exc:  # sbatch refused: say so plainly; the cells stay "unsubmitted"
            raise SystemExit(f"error: Slurm refused the submission of {len(cells)} cell(s): {str(exc).strip()}\n"
                             "fix the executor settings, then re-run the sweep command or "
                             f"`python -m runners.sweep status {sweep_dir} --resubmit-failed`") from None
        with edit_manifest(sweep_dir) as manifest:
            manifest["executor"] = settings.to_dict()  # the defaults of later resubmissions
            for c, job in zip(cells, jobs):
                manifest["cells"][c.key]["submissions"].append(_submission_entry(sweep_dir, job, settings, folder,
                                                                                 resume))
        array = jobs[0].job_id.split("_")[0] if jobs else "-"
        log(f"submitted {len(jobs)} cell(s) as Slurm job array {array} (at most "
            f"{settings.max_parallel or len(jobs)} at once); logs under {folder}")
        return None
    return _run_local(sweep_dir, cells, settings, executor, argvs, folder, resume, log, poll_s)


def _run_local(sweep_dir, cells, settings, executor, argvs, folder, resume, log, poll_s) -> list[CellStatus]:
    """The local executor's scheduler: at most ``max_parallel`` cells at once, in this process."""
    max_parallel = settings.max_parallel or 1
    queue, running = list(cells), []
    try:
        while queue or running:
            while queue and len(running) < max_parallel:
                cell = queue.pop(0)
                job = executor.submit(_job_for(cell, settings), argvs[cell.key], resume)
                with edit_manifest(sweep_dir) as manifest:
                    manifest["cells"][cell.key]["submissions"][-1] = _submission_entry(
                        sweep_dir, job, settings, folder, resume)
                log(f"started cell {cell.key} ({cell.name}) as local job {job.job_id}")
                running.append((cell, job))
            time.sleep(poll_s)
            for cell, job in list(running):
                if job.done():
                    running.remove((cell, job))
                    state = next(s for s in cell_statuses(sweep_dir) if s.key == cell.key)
                    log(f"cell {cell.key} ({cell.name}): {state.state} {state.detail}".rstrip())
    except KeyboardInterrupt:
        for _, job in running:
            job.cancel()
        raise
    keys = {c.key for c in cells}
    return [s for s in cell_statuses(sweep_dir) if s.key in keys]


def wait_for_cells(sweep_dir: Path, *, timeout_s: float | None = None, poll_s: float = 2.0,
                   log: Callable[[str], None] | None = print) -> list[CellStatus]:
    """Poll until no cell is pending, running or unknown (or ``timeout_s`` passes); returns the statuses."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    while True:
        statuses = cell_statuses(sweep_dir)
        for st in statuses:
            if log is not None and seen.get(st.key) != st.state:
                log(f"{now_iso()} cell {st.key} ({st.name}): {st.state} {st.detail}".rstrip())
            seen[st.key] = st.state
        if not any(st.state in ("pending", "running", "unknown") for st in statuses):
            return statuses
        if deadline is not None and time.monotonic() > deadline:
            return statuses
        time.sleep(poll_s)


def resubmit_failed(sweep_dir: Path, settings: ExecutorSettings, *, log: Callable[[str], None] = print,
                    statuses: list[CellStatus] | None = None) -> list[CellStatus] | None:
    """Resubmit the failed (and never-submitted) cells only; they resume from their last checkpoint."""
    manifest = load_manifest(sweep_dir)
    statuses = statuses if statuses is not None else cell_statuses(sweep_dir, manifest)
    todo = [Cell.from_manifest(st.key, manifest["cells"][st.key]) for st in statuses
            if st.state in ("failed", "unsubmitted")]
    if not todo:
        log("no failed cells to resubmit")
        return None
    log(f"resubmitting {len(todo)} failed cell(s) with {settings.executor}: they resume from their last checkpoint")
    return submit_cells(sweep_dir, todo, settings, resume=True, log=log)


# ============================================================================================== CLI
RUN_PASSTHROUGH = (  # (sweep option, runners.run option, takes a value)
    ("--iters", "--iters", True), ("--batch-size", "--batch-size", True), ("--lr", "--lr", True),
    ("--checkpoint-interval", "--checkpoint-interval", True), ("--log-interval", "--log-interval", True),
    ("--data-root", "--data-root", True), ("--weights-dir", "--weights-dir", True),
    ("--device", "--device", True), ("--workers", "--workers", True),
    ("--allow-random-init", "--allow-random-init", False), ("--no-reference", "--no-reference", False),
    ("--profile", "--profile", True), ("--precision", "--precision", True),
)


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("executor (also from --slurm-config FILE.json|.toml with the same names)")
    g.add_argument("--executor", choices=("local", "slurm"), default=None, help="where cells run (default: local)")
    g.add_argument("--slurm-config", "--executor-config", dest="config_file", default=None,
                   help="JSON or TOML file of executor settings (partition, time, gpus_per_task, max_parallel, "
                        "setup, additional ...); command-line options win")
    g.add_argument("--partition", default=None)
    g.add_argument("--time", default=None, help="time limit per attempt: minutes or [D-]HH:MM[:SS] (default 60)")
    g.add_argument("--gpus-per-task", type=int, default=None, help="GPUs per cell; >1 trains with DDP, one "
                   "process per GPU, on the recipe's global batch (local executor, 0: cells see this shell's GPUs)")
    g.add_argument("--procs-per-task", type=int, default=None,
                   help="processes per cell (default: GPUs per cell, at least 1); >1 on CPU uses gloo DDP")
    g.add_argument("--cpus-per-task", type=int, default=None, help="CPUs (and torch threads) per process (default 1)")
    g.add_argument("--mem-gb", type=float, default=None)
    g.add_argument("--max-parallel", type=int, default=None,
                   help="cells running at once (Slurm: job array parallelism; local: default 1)")
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--exclude", default=None)
    g.add_argument("--signal-delay-s", type=int, default=None,
                   help="USR2 this long before the time limit, to checkpoint and requeue (default 90; 30 if < 10 min)")
    g.add_argument("--max-timeouts", type=int, default=None, help="requeues after time limits (default 3)")
    g.add_argument("--setup", action="append", default=None, help="shell line run before each job (repeatable)")
    g.add_argument("--sbatch", action="append", default=None, metavar="KEY=VALUE",
                   help="further sbatch option, e.g. --sbatch reservation=mine (repeatable)")


def _settings_from(args: argparse.Namespace, base: ExecutorSettings | None = None) -> ExecutorSettings:
    settings = base or ExecutorSettings()
    try:
        if args.config_file:
            settings = settings.merged(load_settings_file(args.config_file))
        extra = dict(settings.additional)
        for item in args.sbatch or []:
            if "=" not in item:
                raise ValueError(f"--sbatch {item!r}: use KEY=VALUE")
            k, v = item.split("=", 1)
            extra[k.strip().lstrip("-")] = v
        return settings.merged({
            "executor": args.executor, "partition": args.partition, "time": args.time,
            "gpus_per_task": args.gpus_per_task, "procs_per_task": args.procs_per_task,
            "cpus_per_task": args.cpus_per_task, "mem_gb": args.mem_gb, "max_parallel": args.max_parallel,
            "account": args.account, "qos": args.qos, "constraint": args.constraint, "exclude": args.exclude,
            "signal_delay_s": args.signal_delay_s, "max_timeouts": args.max_timeouts,
            "setup": (settings.setup + args.setup) if args.setup else None, "additional": extra or None,
        })
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runners.sweep",
        description="Run every method x protocol x eval variant x backbone x seed cell of runners.run, "
                    "locally or on Slurm.\nStatus of a sweep: python -m runners.sweep status DIR "
                    "[--resubmit-failed] [--wait]",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("grid")
    g.add_argument("--methods", required=True, help="comma list of methods, or 'all'")
    g.add_argument("--protocols", default="gta2cbm", help="comma list of protocols, or 'all' (default gta2cbm)")
    g.add_argument("--eval-variants", "--eval-variant", dest="eval_variants", default=None,
                   help="comma list of evaluation variants (default: the profile's: harmonised 'default', "
                        "released the paper's)")
    g.add_argument("--backbones", "--backbone", dest="backbones", default=None,
                   help="comma list of backbones, or 'all' (default: each method's paper backbone)")
    g.add_argument("--seeds", default=None, help="a count (3 = seeds 0,1,2), a list (0,4,7) or a range (5:8) "
                                                 "(default: one run with the profile's seed: harmonised 0, "
                                                 "released the official code's)")
    g.add_argument("--out", default=None, help="sweep folder (default: runs/sweeps/sweep-<grid hash>)")
    r = add_passthrough_options(p)
    r.add_argument("--cfg-options", nargs="+", default=None, metavar="KEY=VALUE",
                   help="method-config / recipe overrides for every cell (see runners.run --help)")
    r.add_argument("--run-args", default="", help="further runners.run arguments, one quoted string")
    _add_executor_options(p)
    c = add_control_options(p)
    c.add_argument("--selftest", action="store_true", help=argparse.SUPPRESS)  # SelfTestJob cells (tests)
    return p


def add_passthrough_options(p: argparse.ArgumentParser, options: Sequence[str] | None = None):
    """The :data:`RUN_PASSTHROUGH` options (only ``options`` when given), as one argument group."""
    r = p.add_argument_group("passed to every runners.run")
    for opt, _, takes in RUN_PASSTHROUGH:
        if options is None or opt in options:
            choices = {"--profile": ("harmonised", "released"), "--precision": ("bf16", "tf32", "fp32")}.get(opt)
            r.add_argument(opt, default=None, **({"choices": choices} if takes else {"action": "store_true"}))
    return r


def add_control_options(p: argparse.ArgumentParser):
    """--dry-run, --resubmit-failed, --wait (the arguments of :func:`run_cells`), as one argument group."""
    c = p.add_argument_group("control")
    c.add_argument("--dry-run", action="store_true", help="list the cells and what would be skipped; submit nothing")
    c.add_argument("--resubmit-failed", action="store_true", help="also resubmit failed cells (they resume)")
    c.add_argument("--wait", action="store_true", help="Slurm: block until every cell has finished")
    c.add_argument("--poll-s", type=float, default=5.0, help=argparse.SUPPRESS)
    return c


def build_status_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runners.sweep status",
                                description="Per-cell state of a sweep folder (pending/running/done/failed).")
    p.add_argument("sweep_dir")
    p.add_argument("--resubmit-failed", action="store_true", help="resubmit failed cells (they resume)")
    p.add_argument("--wait", action="store_true", help="block until no cell is pending or running")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--poll-s", type=float, default=5.0, help=argparse.SUPPRESS)
    _add_executor_options(p)
    return p


def passthrough_args(args: argparse.Namespace, options: Sequence[str] | None = None) -> list[str]:
    """The ``runners.run`` arguments of the :data:`RUN_PASSTHROUGH` options set in ``args`` (only ``options``
    when given); folders made absolute, so the jobs read what was planned wherever they start."""
    run_args: list[str] = []
    for opt, run_opt, takes in RUN_PASSTHROUGH:
        if options is not None and opt not in options:
            continue
        value = getattr(args, opt.lstrip("-").replace("-", "_"))
        if takes and value is not None:
            if opt in ("--data-root", "--weights-dir"):
                value = str(Path(value).absolute())
            run_args += [run_opt, str(value)]
        elif not takes and value:
            run_args.append(run_opt)
    if getattr(args, "cfg_options", None):
        run_args += ["--cfg-options", *args.cfg_options]
    return run_args


def grid_from_args(args: argparse.Namespace) -> Grid:
    run_args = passthrough_args(args) + shlex.split(args.run_args)
    return Grid(methods=_split(args.methods), protocols=_split(args.protocols), variants=_split(args.eval_variants),
                backbones=_split(args.backbones), seeds=parse_seeds(args.seeds) if args.seeds else [],
                run_args=run_args,
                kind="selftest" if args.selftest else "run")


def sweep_main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    grid = grid_from_args(args)
    # the default folder's name hashes the grid as earlier versions spelled it (variants/seeds left to the
    # profile = ["default"] / [0]), so a default sweep finds the folder it used before
    named = dataclasses.replace(grid, variants=grid.variants or ["default"], seeds=grid.seeds or [0])
    sweep_dir = Path(args.out or Path("runs") / "sweeps" / f"sweep-{content_hash(dataclasses.asdict(named))[:8]}")
    sweep_dir = sweep_dir.absolute()
    manifest = load_manifest(sweep_dir)
    stored = ExecutorSettings().merged(manifest["executor"]) if manifest["executor"] else None
    settings = _settings_from(args, stored)
    cells = plan_cells(grid)
    return run_cells(sweep_dir, cells, settings, argv, dry_run=args.dry_run, resubmit_failed=args.resubmit_failed,
                     wait=args.wait, poll_s=args.poll_s)


def run_cells(sweep_dir: Path, cells: list[Cell], settings: ExecutorSettings, argv: Sequence[str], *,
              dry_run: bool = False, resubmit_failed: bool = False, wait: bool = False, poll_s: float = 5.0) -> int:
    """Submit the cells of ``sweep_dir`` that are not done (nor queued/running; failed ones only with
    ``resubmit_failed``), print the plan and the states; the exit code of a sweep command."""
    manifest = load_manifest(sweep_dir)
    # the state of cells this folder already knows
    known = {**manifest["cells"]}
    for c in cells:
        known.setdefault(c.key, {**c.to_dict(), "submissions": []})
    preview = {**manifest, "cells": {c.key: known[c.key] for c in cells}}
    statuses = {st.key: st for st in cell_statuses(sweep_dir, preview)}
    submit, skipped_failed = [], []
    actions = []
    for c in cells:
        st = statuses[c.key]
        if st.state == "done":
            action = "skip: done"
        elif st.state in ("pending", "running", "unknown"):
            action = f"skip: {st.state} (job {st.job_id})"
        elif st.state == "failed" and not resubmit_failed:
            action = "skip: failed (add --resubmit-failed)"
            skipped_failed.append(c)
        else:
            action = "resubmit (resume)" if st.state == "failed" else "submit"
            submit.append(c)
        actions.append((action, c))
    print(f"sweep folder: {sweep_dir}")
    print(f"{len(cells)} cells ({settings.executor} executor): {len(submit)} to submit, "
          f"{sum(a.startswith('skip: done') for a, _ in actions)} done, "
          f"{sum(a.startswith(('skip: pending', 'skip: running', 'skip: unknown')) for a, _ in actions)} queued "
          f"or running, {len(skipped_failed)} failed and not resubmitted")
    if dry_run:
        width = max(len(a) for a, _ in actions) if actions else 0
        for action, c in actions:
            lb = c.labels
            print(f"  {action:<{width}}  {c.key}  {lb['method']} {lb['backbone']} {lb['protocol']} "
                  f"{lb['variant']} seed {lb['seed']} {lb.get('profile', 'harmonised')}  -> {c.run_rel}")
        return 0
    with edit_manifest(sweep_dir) as m:
        m["invocations"].append({"time": now_iso(), "argv": list(argv), "cells": [c.key for c in cells]})
        for c in cells:
            m["cells"].setdefault(c.key, {**c.to_dict(), "submissions": []})
    fresh = [c for c in submit if statuses[c.key].state != "failed"]
    failed = [c for c in submit if statuses[c.key].state == "failed"]
    results = []
    for group, resume in ((fresh, False), (failed, True)):
        if group:
            results.append(submit_cells(sweep_dir, group, settings, resume=resume, poll_s=min(poll_s, 0.5)))
    if settings.executor == "slurm" and wait:
        final = wait_for_cells(sweep_dir, poll_s=poll_s)
        print(format_status(final))
        return 1 if any(st.state == "failed" for st in final) else 0
    if settings.executor == "local":
        final = cell_statuses(sweep_dir)
        print(format_status(final))
        return 1 if any(st.state == "failed" for st in final if st.key in {c.key for c in cells}) else 0
    print(f"check progress with: python -m runners.sweep status {sweep_dir}")
    return 0


def status_main(argv: Sequence[str]) -> int:
    args = build_status_parser().parse_args(argv)
    sweep_dir = Path(args.sweep_dir).absolute()
    if not manifest_path(sweep_dir).exists():
        raise SystemExit(f"error: {sweep_dir} has no {MANIFEST_FILE}: not a sweep folder "
                         "(create one with python -m runners.sweep --methods ... --out DIR)")
    manifest = load_manifest(sweep_dir)
    statuses = wait_for_cells(sweep_dir, poll_s=args.poll_s, log=None if args.json else print) if args.wait \
        else cell_statuses(sweep_dir, manifest)
    if args.resubmit_failed:
        stored = ExecutorSettings().merged(manifest["executor"]) if manifest["executor"] else None
        settings = _settings_from(args, stored)
        resubmit_failed(sweep_dir, settings, statuses=statuses)
        statuses = cell_statuses(sweep_dir)
    if args.json:
        print(json.dumps([st.to_dict() for st in statuses], indent=2))
    else:
        print(format_status(statuses))
    return 1 if any(st.state == "failed" for st in statuses) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "status":
        return status_main(argv[1:])
    if argv and argv[0] == "submit":
        argv = argv[1:]
    return sweep_main(argv)


if __name__ == "__main__":
    sys.exit(main())
