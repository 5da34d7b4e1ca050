"""Preflight: everything a run needs, checked in seconds before the model is built.

``preflight(run, args)`` checks, in order of cost: the output folder (writable, enough free space for the
run's checkpoints and evaluation files), the per-process batch, the official weight files (present and
readable), the ``--checkpoint`` (readable, and holding every trainable key of the method), and every split
the run reads (present, and a sample of each checked with ``datasets.check``: label encoding, image/label
sizes, ids). The model is only instantiated on the ``meta`` device (no memory, no weights) to learn its
weight files and trainable keys.

A user's mistake is a :class:`UserError`: one line (what, where, the fix), exit code 2, no traceback
(``--debug`` shows it).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import argparse

    from runners.run import ResolvedRun

SPLIT_SAMPLE = 8
"""Pairs per split whose labels are decoded by the preflight (``python -m datasets.check`` does all)."""

CONFUSION_BYTES_PER_IMAGE = 19 * 19 * 8 + 128  # one int64 [19,19] matrix and its name in confusion_<key>.npz
SPACE_MARGIN = 1.25


class UserError(Exception):
    """A user's mistake: ``error: <what> (<where>); fix: <fix>`` on one line, exit code 2."""

    exit_code = 2

    def __init__(self, what: str, where: str | os.PathLike | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, None if where is None else str(where), fix
        super().__init__(self.line())

    def __reduce__(self):  # picklable with its fields (DDP ranks share one rank's error)
        return (_restore_error, (type(self), self.__dict__))

    def line(self) -> str:
        text = f"error: {self.what}"
        if self.where:
            text += f" ({self.where})"
        if self.fix:
            text += f"; fix: {self.fix}"
        return " ".join(text.split())  # one line, whatever the parts hold


def _restore_error(cls: type, state: dict[str, Any]) -> UserError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error.line())
    return error


class RunInterrupted(UserError):
    """SIGINT/SIGTERM: the run stopped at a safe point; ``--resume`` continues it. Exit code 128 + signal."""

    def __init__(self, what: str, where: str | os.PathLike | None, fix: str, signum: int):
        super().__init__(what, where, fix)
        self.exit_code = 128 + int(signum)

    def line(self) -> str:
        return super().line().replace("error: ", "stopped: ", 1).replace("; fix: ", "; to continue: ", 1)


class DiskFullError(UserError):
    """No space left on the device while writing; the partial file is removed, the previous one is intact."""


def report_error(exc: UserError, *, debug: bool = False, stream=None) -> int:
    """Print ``exc`` as its one line (``--debug``: the traceback too) and return its exit code."""
    if debug:
        import traceback

        traceback.print_exception(exc, file=stream or sys.stderr)
    print(exc.line(), file=stream or sys.stderr, flush=True)
    return exc.exit_code


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """ENOSPC, or torch's ``enforce fail at inline_container.cc`` (a failed zip write) on a nearly full disk."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return isinstance(exc, (OSError, RuntimeError)) and shutil.disk_usage(folder).free < (64 << 20)
    except OSError:
        return False


def disk_full_error(path: Path, exc: BaseException) -> DiskFullError:
    folder = path.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(f"no space left on the device writing {path.name} ({type(exc).__name__}; {free}); "
                         "the partial file was removed and the previous version is intact", folder,
                         "free space there (or pass another --out) and rerun the same command with --resume")


# ---------------------------------------------------------------------------------------------- checks
def check_output_folder(out: Path, need_bytes: int) -> None:
    """``out`` (or its nearest existing parent) is a writable folder with ``need_bytes`` free."""
    out = Path(out)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError("the output folder is inside a file, not a folder", existing, "pass another --out")
    probe = existing / f".preflight-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
    except OSError as exc:
        raise UserError(f"the output folder is not writable ({exc.strerror or exc})", existing,
                        "pass a writable --out (or fix the folder's permissions)") from None
    finally:
        probe.unlink(missing_ok=True)
    free = shutil.disk_usage(existing).free
    if free < need_bytes:
        raise UserError(f"not enough free space for the run's checkpoints and evaluation files: "
                        f"{free / 2**30:.2f} GiB free, about {need_bytes / 2**30:.2f} GiB needed", existing,
                        "free space there or pass another --out")


def required_bytes(trainable_params: int, eval_images: int, *, trains: bool) -> int:
    """Checkpoint (fp32 trainable weights + two AdamW moments, written next to the previous one), the final
    trainable weights, and one confusion matrix per evaluated image, with a 25 % margin."""
    weights = 4 * trainable_params
    checkpoint = (2 * 3 * weights + weights) if trains else 0
    return int(SPACE_MARGIN * (checkpoint + CONFUSION_BYTES_PER_IMAGE * eval_images))


def trains_batchnorm(method) -> bool:
    """Whether ``method`` trains BatchNorm layers (e.g. FAMix's DeepLabv3+ head, whose image-pooling branch
    normalises a single value per sample and channel: one sample cannot be normalised)."""
    import torch.nn as nn

    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and m.weight.requires_grad
               for m in method.modules())


def check_batch(batch: int, world_size: int, *, batchnorm: bool, sync_batchnorm: bool, name: str) -> None:
    """The batch splits evenly over the processes, and trained BatchNorm layers see at least 2 samples: per
    process, or over the global batch where DDP synchronises them (SyncBatchNorm, CUDA)."""
    if batch < 1 or batch % world_size:
        raise UserError(f"batch size {batch} does not split over {world_size} processes", "--batch-size",
                        f"use a multiple of {world_size}")
    seen = batch if sync_batchnorm or world_size == 1 else batch // world_size
    if batchnorm and seen < 2:
        need = 2 if sync_batchnorm or world_size == 1 else 2 * world_size
        where = "" if world_size == 1 else f" on {world_size} processes without SyncBatchNorm (CPU)"
        raise UserError(f"{name} trains BatchNorm layers, which need at least 2 samples per batch; batch {batch}"
                        f"{where} gives {seen}", "--batch-size", f"use --batch-size {need} or more")


def check_weights(method, weights_dir: Path | None, *, allow_random_init: bool) -> list[str]:
    """Every official file of the method is present and readable; returns the missing ones when allowed."""
    from methods.weights import MissingWeightsError, locate

    missing = []
    for file in method.pretrained_loaders():
        path = locate(weights_dir, file)
        if path is None:
            if allow_random_init:
                missing.append(file)
                continue
            first = str(MissingWeightsError(file, weights_dir)).split("\n", 1)[0]
            raise UserError(first.rstrip("."), weights_dir or "--weights-dir",
                            "put the official file there, or opt in to random weights with --allow-random-init")
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError as exc:
            raise UserError(f"official weights file {file} is not readable ({exc.strerror or exc})", path,
                            "fix the file's permissions or copy it again") from None
        if len(head) < 4:
            raise UserError(f"official weights file {file} is empty or truncated", path,
                            "download it again")
    return missing


def read_checkpoint(path: Path) -> Any:
    """``torch.load`` a checkpoint memory-mapped (fast for GB-sized files) or, for legacy formats, in full."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=False)


def check_checkpoint(method, path: str | os.PathLike) -> None:
    """``--checkpoint`` is readable and holds every trainable key of ``method`` (a meta-device instance)."""
    path = Path(path)
    if not path.is_file():
        raise UserError("checkpoint not found", path, "pass an existing file to --checkpoint")
    try:
        state = read_checkpoint(path)
    except Exception as exc:  # truncated zip, pickle errors, ...: all mean an unusable file
        raise UserError(f"checkpoint cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
                        path, "the file is truncated or not a PyTorch checkpoint; copy it again") from None
    if isinstance(state, dict) and not any(hasattr(v, "shape") or isinstance(v, dict) for v in state.values()):
        # neither tensors nor a nested state dict (ours: "model", mmseg: "state_dict", FAMix: "model_state")
        raise UserError("checkpoint holds no state dict", path, "pass a model checkpoint (model_final.pt, "
                        "checkpoints/last.pt or an official release of this method)")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying into meta parameters is a no-op, as intended here
            report = method.load_checkpoint(state)
    except ValueError as exc:
        raise UserError(f"checkpoint does not match {method.name}: {str(exc).splitlines()[0]}", path,
                        f"pass a checkpoint of this method and backbone") from None
    if report.missing:
        examples = ", ".join(report.missing[:3])
        raise UserError(f"checkpoint lacks {len(report.missing)} trainable key(s) of {method.name} "
                        f"(e.g. {examples})", path,
                        "pass a checkpoint of this method, backbone and source (or the run's model_final.pt)")


def check_splits(splits, data_root: Path, *, unlabelled=(), sample: int = SPLIT_SAMPLE) -> dict[str, int]:
    """Every split present, a sample of each checked (``datasets.check``); returns
    ``{"<dataset>/<split>": number of images}``."""
    from datasets.check import check_split_sample

    sizes = {}
    for s in list(splits) + list(unlabelled):
        rep = check_split_sample(s.dataset, s.split, data_root, sample=sample, labels=s not in unlabelled)
        if rep.problems:
            p = rep.problems[0]
            example = f"; e.g. {p.examples[0]}" if p.examples else ""
            raise UserError(f"split {s.dataset}/{s.split} ({s.key}): {p.message}{example}", data_root,
                            (p.fix or "see python -m datasets.check") + f" (full check: python -m datasets.check "
                            f"--data-root {data_root} --dataset {s.dataset})")
        sizes[f"{s.dataset}/{s.split}"] = rep.num_pairs
    return sizes


# ---------------------------------------------------------------------------------------------- preflight
def preflight(run: "ResolvedRun", args: "argparse.Namespace", *, world_size: int = 1,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """All checks of a run (module docstring); raises :class:`UserError`. Returns what it found."""
    import torch

    t0 = time.perf_counter()
    protocol = run.protocol
    train = [] if args.eval_only else list(protocol.sources)
    evaluated = list(protocol.targets) + ([] if args.no_reference else [protocol.reference])
    sizes = check_splits(train + evaluated, run.data_root, unlabelled=protocol.exports if args.export else ())
    with torch.device("meta"):
        method = run.method_class(run.config)
    if not args.eval_only:
        cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        check_batch(run.recipe.batch_size, world_size, batchnorm=trains_batchnorm(method),
                    sync_batchnorm=cuda and world_size > 1, name=run.method_class.name)
    missing = check_weights(method, run.weights_dir, allow_random_init=run.miniature or args.allow_random_init)
    if args.checkpoint:
        check_checkpoint(method, args.checkpoint)
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)
    eval_images = sum(sizes[f"{s.dataset}/{s.split}"] for s in evaluated)
    need = required_bytes(trainable, eval_images, trains=not args.eval_only)
    check_output_folder(run.out, need)
    seconds = time.perf_counter() - t0
    weights = ("no official weight files" if not method.pretrained_loaders() else
               f"weights missing: {', '.join(missing)}" if missing else "weights found")
    log(f"preflight ok in {seconds:.1f} s: {len(sizes)} split(s) present and sampled, {weights}"
        f"{', checkpoint matches' if args.checkpoint else ''}, about {need / 2**20:.0f} MiB needed in {run.out}")
    return {"seconds": seconds, "split_sizes": sizes, "missing_weights": missing, "bytes_needed": need}
