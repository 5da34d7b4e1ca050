"""Experiment loggers: ``--logger {tensorboard,wandb,none}`` of ``runners.run``.

The run's own record of training is ``train_log.jsonl`` (the :class:`runners.train.Trainer` writes it); a
logger mirrors every log line to a dashboard as scalars under fixed tags:

- ``train/loss`` (the total) and ``train/<name>`` for every named loss, ``train/grad_norm``, ``train/it_per_s``;
- ``lr/group<i>`` the learning rate of each optimizer parameter group (``lr/group0`` is the base group);
- ``eval/<target>/mIoU``, ``eval/<target>/rPD``, ``eval/mean_mIoU``, ``eval/mean_rPD``, ``eval/<source>/mIoU``
  (the rPD reference) at the final iteration.

TensorBoard writes event files to ``<run>/tensorboard`` through ``torch.utils.tensorboard.SummaryWriter``;
a resumed run purges the events after the iteration it resumes from. W&B runs in offline mode (``wandb sync``
uploads later) and needs the ``wandb`` package, which the harness does not install.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["LOGGERS", "RunLogger", "NullLogger", "TensorBoardLogger", "WandbLogger", "build_logger",
           "logger_problem", "loss_names", "train_scalars", "eval_scalars", "read_event_scalars"]

LOGGERS = ("tensorboard", "wandb", "none")
TENSORBOARD_DIR = "tensorboard"
_TRAIN_KEYS = ("iteration", "loss", "lr", "lr_groups", "time", "grad_norm", "it_per_s")


def loss_names(entry: dict[str, Any]) -> list[str]:
    """The named losses of a ``train_log.jsonl`` line (every number that is not bookkeeping)."""
    return [k for k, v in entry.items() if k not in _TRAIN_KEYS and isinstance(v, (int, float))]


def train_scalars(entry: dict[str, Any]) -> dict[str, float]:
    """Tag -> value for one ``train_log.jsonl`` line."""
    out = {"train/loss": float(entry["loss"])}
    out.update({f"train/{k}": float(entry[k]) for k in loss_names(entry)})
    for k in ("grad_norm", "it_per_s"):
        if entry.get(k) is not None:
            out[f"train/{k}"] = float(entry[k])
    lrs = entry.get("lr_groups") or [entry["lr"]]
    out.update({f"lr/group{i}": float(v) for i, v in enumerate(lrs)})
    return {k: v for k, v in out.items() if math.isfinite(v)}


def eval_scalars(results: dict[str, Any]) -> dict[str, float]:
    """Tag -> value for the ``results`` of a result record."""
    out: dict[str, float] = {}
    for key, t in results["targets"].items():
        out[f"eval/{key}/mIoU"] = float(t["miou"])
        if key in results.get("rpd", {}):
            out[f"eval/{key}/rPD"] = float(results["rpd"][key])
    out["eval/mean_mIoU"] = float(results["mean_miou"])
    if "reference" in results:
        out[f"eval/{results['reference']['key']}/mIoU"] = float(results["reference"]["miou"])
        out["eval/mean_rPD"] = float(results["mean_rpd"])
    return out


class RunLogger:
    """Mirrors scalars to a dashboard; this base class logs nothing (``--logger none``)."""

    kind = "none"

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Log ``{tag: value}`` at ``step`` (the training iteration)."""

    def log_train(self, entry: dict[str, Any]) -> None:
        """Log one ``train_log.jsonl`` line (the Trainer's ``on_log`` callback)."""
        self.log_scalars(train_scalars(entry), int(entry["iteration"]))

    def log_eval(self, results: dict[str, Any], step: int) -> None:
        self.log_scalars(eval_scalars(results), step)

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        """What the result record keeps about the logger."""
        return {"kind": self.kind}


NullLogger = RunLogger


def _after_existing_event_files(log_dir: Path) -> None:
    """Wait until the clock is past the second in every event file name of ``log_dir``. TensorBoard reads the
    files in name order, and the name is ``events.out.tfevents.<second>.<host>.<pid>.<counter>``: a resumed
    writer opened in the same second could sort before the interrupted one (counter 10 < 9, another pid), and
    its purge would then be undone."""
    stamps = [int(part) for p in log_dir.glob("events.out.tfevents.*")
              if (part := p.name.split(".")[3]).isdigit()]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


class TensorBoardLogger(RunLogger):
    """Event files in ``log_dir``; the writer opens at the first step logged and purges the events at and
    after it, so a resumed run does not show the interrupted session's tail twice."""

    kind = "tensorboard"

    def __init__(self, log_dir: Path | str) -> None:
        self.log_dir = Path(log_dir)
        self._writer = None

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            _after_existing_event_files(self.log_dir)
            self._writer = SummaryWriter(str(self.log_dir), purge_step=step)
        for tag, value in values.items():
            self._writer.add_scalar(tag, value, step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "dir": TENSORBOARD_DIR}


class WandbLogger(RunLogger):
    """An offline W&B run in ``<run>/wandb`` (``wandb sync <run>/wandb/offline-run-*`` uploads it)."""

    kind = "wandb"

    def __init__(self, out_dir: Path | str, name: str, config: dict[str, Any], run_id: str) -> None:
        import wandb

        self._run = wandb.init(project="dgss-harness", name=name, id=run_id, config=config, dir=str(out_dir),
                               mode="offline", resume="allow")

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self._run.log(values, step=step)

    def close(self) -> None:
        self._run.finish()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "dir": "wandb", "mode": "offline"}


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # imported already, without a spec
        return package in sys.modules


def logger_problem(kind: str) -> str | None:
    """Why ``--logger kind`` cannot run here (one line with the fix), or None."""
    if kind not in LOGGERS:
        return f"--logger {kind}: choose one of {', '.join(LOGGERS)}"
    if kind == "tensorboard" and not _installed("tensorboard"):
        return "--logger tensorboard needs the tensorboard package: pip install -e . (or use --logger none)"
    if kind == "wandb" and not _installed("wandb"):
        return "--logger wandb needs the wandb package: pip install wandb (runs offline), or use --logger tensorboard"
    return None


def build_logger(kind: str, out_dir: Path | str, *, name: str = "", config: dict[str, Any] | None = None,
                 run_id: str = "") -> RunLogger:
    """The logger ``kind`` for the run folder ``out_dir`` (check :func:`logger_problem` first)."""
    problem = logger_problem(kind)
    if problem:
        raise ValueError(problem)
    if kind == "tensorboard":
        return TensorBoardLogger(Path(out_dir) / TENSORBOARD_DIR)
    if kind == "wandb":
        return WandbLogger(out_dir, name or Path(out_dir).name, config or {}, run_id or Path(out_dir).name)
    return RunLogger()


def read_event_scalars(log_dir: Path | str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files of ``log_dir``: ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
