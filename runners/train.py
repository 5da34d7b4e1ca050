"""The training loop: AdamW/SGD param groups, poly LR with warmup, the run's precision (``benchmarks.numerics``:
bf16 autocast, TF32 or strict fp32), gradient clipping, atomic checkpoints every N iterations and *exact*
resume (same batches, same augmentation, same RNG state), and optional checkpoint selection (the recipe's
``select_interval``: score a validation split every N iterations and keep the best model).

Data order is a pure function of (seed, global sample index): sample ``g = it * batch + j`` is element
``g % N`` of the permutation of epoch ``g // N``, and its augmentation is seeded with ``(seed, g)``. So a run
resumed at iteration k needs no dataloader replay (cf. mmseg#3671), and DDP ranks can slice the same stream.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from benchmarks.numerics import Numerics, resolve_numerics
from datasets.batching import batch_to_device, collate
from methods.base import Method, TrainRecipe
from runners import distributed
from runners.records import atomic_write

__all__ = ["DeterministicSampler", "Trainer", "TrainResult", "build_optimizer", "collate", "lr_factor", "train_step"]


# ---------------------------------------------------------------------------------------------- data order
class DeterministicSampler(Sampler):
    """Yields ``(index, aug_seed)`` for iterations ``start_iter .. iterations-1`` (this rank's share)."""

    def __init__(self, num_items: int, batch_size: int, iterations: int, seed: int, start_iter: int = 0,
                 rank: int = 0, world_size: int = 1):
        if num_items == 0:
            raise ValueError("the training split is empty")
        self.num_items, self.batch_size, self.iterations = num_items, batch_size, iterations
        self.seed, self.start_iter, self.rank, self.world_size = seed, start_iter, rank, world_size
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.num_items)}
        return self._perms[epoch]

    def global_batch(self, iteration: int) -> list[tuple[int, int]]:
        out = []
        for j in range(self.batch_size * self.world_size):
            g = iteration * self.batch_size * self.world_size + j
            idx = int(self._perm(g // self.num_items)[g % self.num_items])
            out.append((idx, int(np.random.SeedSequence([self.seed, g]).generate_state(1)[0])))
        return out

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for it in range(self.start_iter, self.iterations):
            batch = self.global_batch(it)
            yield from batch[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def __len__(self) -> int:
        return (self.iterations - self.start_iter) * self.batch_size




# ---------------------------------------------------------------------------------------------- schedule
def lr_factor(recipe: TrainRecipe, iteration: int, base_lr: float) -> float:
    """LR of a group with base LR ``base_lr`` at ``iteration`` (0-based).

    Poly decays ``(base - min_lr) * (1 - t)^power + min_lr`` with ``min_lr`` applied per group (the tqdm
    quirk: a group whose base LR equals min_lr stays constant); ``t = it / T`` in mmcv's convention and
    ``it / (T - 1)`` in mmengine's (``recipe.poly_convention``; T = iterations after the constant phase).
    Linear warmup scales the regular LR by
    ``1 - (1 - it / warmup) * (1 - warmup_ratio)``. ``constant_iters`` holds the LR before the decay starts.
    """
    total = recipe.iterations
    if recipe.schedule == "constant":
        lr = base_lr
    elif recipe.schedule == "poly":
        start = recipe.constant_iters
        span = total - start - (1 if recipe.poly_convention == "mmengine" else 0)
        progress = 0.0 if iteration < start else (iteration - start) / max(1, span)
        min_lr = min(recipe.min_lr, base_lr)
        lr = (base_lr - min_lr) * (1 - min(progress, 1.0)) ** recipe.power + min_lr
    else:
        raise ValueError(f"unknown LR schedule {recipe.schedule!r}")
    if recipe.warmup_iters and iteration < recipe.warmup_iters:
        k = (1 - iteration / recipe.warmup_iters) * (1 - recipe.warmup_ratio)
        lr *= 1 - k
    return lr


def build_optimizer(method: Method, recipe: TrainRecipe) -> torch.optim.Optimizer:
    groups = method.param_groups(recipe)
    if not groups:
        raise ValueError(f"{method.name} has no trainable parameters")
    for g in groups:
        g["initial_lr"] = g["lr"]
    fused = all(p.is_cuda for g in groups for p in g["params"])
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps,
                                 weight_decay=recipe.weight_decay, fused=fused or None)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def train_step(step: Callable[[Tensor, Tensor], dict[str, Tensor]], optimizer: torch.optim.Optimizer,
               params: list[Tensor], images: Tensor, labels: Tensor, *, autocast: Any, grad_clip: float | None
               ) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
    """One optimisation step as the trainer runs it (the speed benchmark times this very function): the losses
    under ``autocast``, their sum, ``zero_grad``, ``backward``, gradient clipping when the recipe clips, the
    optimizer step. Returns (total loss, losses, gradient norm or None)."""
    with autocast:
        losses = step(images, labels)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip is not None else None
    optimizer.step()
    return total, losses, grad_norm


# ---------------------------------------------------------------------------------------------- checkpoints
def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`runners.records.atomic_write` (atomic; no temporary file left behind)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainingStopped(Exception):
    """The run was asked to stop (SIGINT/SIGTERM, ``runners.interrupt``) and checkpointed at ``iteration``."""

    def __init__(self, iteration: int, checkpoint: Path):
        super().__init__(f"stopped at iteration {iteration}; checkpoint {checkpoint}")
        self.iteration, self.checkpoint = iteration, checkpoint


def progress_line(entry: dict[str, Any], total: int, start: int, seconds: float) -> str:
    """A plain progress line (logs that are not a terminal): iteration, losses, lr, it/s and ETA."""
    done = entry["iteration"] - start
    rate = done / seconds if seconds > 0 else 0.0
    eta = (total - entry["iteration"]) / rate if rate > 0 else math.nan
    losses = " ".join(f"{k} {v:.4f}" for k, v in entry.items() if k == "loss" or k.startswith("loss_"))
    eta_text = "?" if math.isnan(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
    return (f"iter {entry['iteration']}/{total}  {losses}  lr {entry['lr']:.3g}  {rate:.2f} it/s  "
            f"ETA {eta_text}")


@dataclass
class TrainResult:
    iterations: int
    resumed_from: int | None
    seconds: float
    final_losses: dict[str, float]
    images_per_second: float
    # checkpoint selection: {"interval", "best_iteration", "best_miou", "checkpoint", "history": [[it, mIoU]]}
    selection: dict[str, Any] | None = None


class Trainer:
    """Runs ``recipe.iterations`` steps of ``method.training_step`` on ``dataset``.

    ``progress``: a tqdm bar when stderr is a terminal; otherwise (or with ``progress=False``) a plain line
    every ``log_interval`` iterations (no carriage-return updates in Slurm logs).
    ``should_stop`` (e.g. a :class:`runners.interrupt.StopRequest`) is asked after every iteration; when it
    says yes, the Trainer checkpoints and raises :class:`TrainingStopped`.
    """

    def __init__(self, method: Method, recipe: TrainRecipe, dataset, *, out_dir: Path, seed: int,
                 device: torch.device, spec_hash: str, num_workers: int = 0, progress: bool = True,
                 log: Callable[[str], None] = print, stop_after: int | None = None,
                 sampler_factory: Callable[..., Sampler] | None = None, compile: bool = False,
                 numerics: Numerics | None = None, validate: Callable[[int], float] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 on_log: Callable[[dict[str, Any]], None] | None = None):
        self.method, self.recipe, self.dataset = method, recipe, dataset
        # precision of the forward pass (default: the harmonised bf16, i.e. autocast on CUDA only)
        self.numerics = numerics or resolve_numerics("bf16", device)
        # checkpoint selection: validate(iteration) -> mIoU every recipe.select_interval iterations (rank 0)
        self.validate = validate if recipe.select_interval else None
        self.selection: dict[str, Any] = {"interval": recipe.select_interval, "best_iteration": None,
                                          "best_miou": None, "checkpoint": "checkpoints/best.pt", "history": []}
        self.on_log = on_log  # gets every train_log.jsonl line on the main rank (runners.loggers)
        self.compile = compile  # torch.compile the training step (graph breaks at the host-side matching)
        # same signature as DeterministicSampler (e.g. a bound datasets.sampling.RareClassSampler); its
        # stream must be a pure function of (seed, global sample index) for exact resume
        self.sampler_factory = sampler_factory or DeterministicSampler
        self.out_dir, self.seed, self.device, self.spec_hash = Path(out_dir), seed, device, spec_hash
        self.num_workers, self.progress, self.log = num_workers, progress, log
        self.stop_after = stop_after  # testing aid: stop (as if killed) after this many iterations
        self.should_stop = should_stop
        self.ckpt_path = self.out_dir / "checkpoints" / "last.pt"
        self.best_path = self.out_dir / self.selection["checkpoint"]
        self.log_path = self.out_dir / "train_log.jsonl"

    # -------------------------------------------------------------------------------------
    def _resume(self, optimizer) -> int:
        if not self.ckpt_path.exists():
            return 0
        ckpt = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        if ckpt.get("spec_hash") != self.spec_hash:
            raise RuntimeError(
                f"{self.ckpt_path} belongs to a different run spec ({ckpt.get('spec_hash')} != {self.spec_hash}); "
                "use another --out or delete the folder to start over")
        report = self.method.load_checkpoint(ckpt["model"])
        if not report.ok():
            raise RuntimeError(f"resume checkpoint {self.ckpt_path} does not match the model: {report.summary()}")
        optimizer.load_state_dict(ckpt["optimizer"])
        per_rank = ckpt.get("rng_per_rank")  # DDP: every rank's own RNG state (same world size only)
        dist = distributed.info()
        set_rng_state(per_rank[dist.rank] if per_rank and len(per_rank) == dist.world_size else ckpt["rng"])
        iteration = int(ckpt["iteration"])
        if ckpt.get("selection"):
            self.selection = ckpt["selection"]
        if dist.is_main:
            self._truncate_log(iteration)
            self.log(f"resuming from {self.ckpt_path} at iteration {iteration}")
        return iteration

    def _truncate_log(self, iteration: int) -> None:
        if not self.log_path.exists():
            return
        kept = [ln for ln in self.log_path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("iteration", 0) <= iteration]
        self.log_path.write_text("".join(ln + "\n" for ln in kept))

    def _save(self, optimizer, iteration: int) -> None:
        rngs = distributed.all_gather_object(rng_state())  # DDP: collective, then rank 0 writes
        if not distributed.is_main():
            return
        atomic_torch_save({
            "iteration": iteration, "model": self.method.checkpoint_state_dict(),
            "optimizer": optimizer.state_dict(), "rng": rngs[0], "spec_hash": self.spec_hash,
            **({"rng_per_rank": rngs} if len(rngs) > 1 else {}),
            **({"selection": self.selection} if self.validate else {}),
        }, self.ckpt_path)

    def _select(self, iteration: int) -> None:
        """Score the model (rank 0) and keep it as ``checkpoints/best.pt`` when it beats the best so far
        (strictly, as FAMix's ``>``). The RNG state is restored afterwards, so selection does not change
        the training stream."""
        if not distributed.is_main():
            return
        state = rng_state()
        miou = float(self.validate(iteration))
        set_rng_state(state)
        self.selection["history"].append([iteration, miou])
        if self.selection["best_miou"] is None or miou > self.selection["best_miou"]:
            self.selection.update(best_iteration=iteration, best_miou=miou)
            atomic_torch_save({"iteration": iteration, "miou": miou, "model": self.method.checkpoint_state_dict(),
                               "spec_hash": self.spec_hash}, self.best_path)

    def _stop_requested(self) -> bool:
        """``should_stop``, agreed by all DDP ranks (one collective per iteration) so they save together."""
        if self.should_stop is None:
            return False
        if distributed.world_size() == 1:
            return bool(self.should_stop())
        flag = torch.tensor([1.0 if self.should_stop() else 0.0], device=self.device)
        return bool(distributed.all_reduce_mean(flag).item() > 0)

    def _append_log(self, entry: dict[str, Any]) -> None:
        with self.log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    # -------------------------------------------------------------------------------------
    def run(self, *, resume: bool) -> TrainResult:
        recipe, method, device = self.recipe, self.method, self.device
        self.out_dir.mkdir(parents=True, exist_ok=True)
        method.to(device)
        optimizer = build_optimizer(method, recipe)
        start = 0
        if resume:
            start = self._resume(optimizer)
        if start == 0:
            seed_everything(self.seed)
        if start >= recipe.iterations:
            return TrainResult(recipe.iterations, start, 0.0, {}, 0.0,
                               selection=dict(self.selection) if self.validate else None)

        # DDP (runners.distributed): each rank trains on its slice of the global batch
        dist = distributed.info()
        if recipe.batch_size % dist.world_size:
            raise ValueError(f"batch size {recipe.batch_size} is not divisible by {dist.world_size} processes")
        rank_batch = recipe.batch_size // dist.world_size
        sampler = self.sampler_factory(len(self.dataset), rank_batch, recipe.iterations, self.seed, start,
                                       rank=dist.rank, world_size=dist.world_size)
        step = distributed.ddp_training_step(method, device) if dist.world_size > 1 else method.training_step
        if self.compile:
            step = torch.compile(step)
        loader = DataLoader(self.dataset, batch_size=rank_batch, sampler=sampler, collate_fn=collate,
                            num_workers=self.num_workers, pin_memory=device.type == "cuda",
                            persistent_workers=False, drop_last=True,
                            # own generator: creating the loader must not consume the global RNG (exact resume)
                            generator=torch.Generator().manual_seed(self.seed))
        params = [p for g in optimizer.param_groups for p in g["params"]]
        pad_color = getattr(method, "pad_color", None)
        method.train()
        bar = None
        if self.progress and dist.is_main and sys.stderr.isatty():
            from tqdm.auto import tqdm
            bar = tqdm(total=recipe.iterations, initial=start, desc=f"train {method.name}", unit="it",
                       dynamic_ncols=True)
        t0 = time.perf_counter()
        losses: dict[str, Tensor] = {}
        iteration = start
        last_logged = (start, t0)  # for it/s between log lines
        for batch in loader:
            for g in optimizer.param_groups:
                g["lr"] = lr_factor(recipe, iteration, g["initial_lr"])
            # uint8 batches from pinned memory; float conversion and mmseg's padding (mean colour) on the device
            images, labels = batch_to_device(batch, device, pad_color=pad_color)
            total, losses, grad_norm = train_step(
                step, optimizer, params, images, labels, grad_clip=recipe.grad_clip,
                autocast=self.numerics.autocast(device.type))
            iteration += 1
            if bar is not None:
                bar.update(1)
            if iteration % recipe.log_interval == 0 or iteration == recipe.iterations or iteration == 1:
                logged = distributed.all_reduce_mean(torch.stack([  # DDP: mean over the global batch
                    t.detach().float().mean() for t in (total, *losses.values())])).tolist()
                now = time.perf_counter()
                entry = {"iteration": iteration, "loss": logged[0], **dict(zip(losses, logged[1:])),
                         "lr": optimizer.param_groups[0]["lr"], "time": now - t0,
                         "lr_groups": [g["lr"] for g in optimizer.param_groups],
                         "it_per_s": (iteration - last_logged[0]) / max(now - last_logged[1], 1e-9)}
                last_logged = (iteration, now)
                if grad_norm is not None:
                    entry["grad_norm"] = float(grad_norm)
                if dist.is_main:
                    self._append_log(entry)
                    if self.on_log is not None:
                        self.on_log(entry)
                if bar is not None:
                    bar.set_postfix(loss=f"{entry['loss']:.3f}")
                elif dist.is_main:
                    self.log(progress_line(entry, recipe.iterations, start, entry["time"]))
            if self.validate and (iteration % recipe.select_interval == 0 or iteration == recipe.iterations):
                self._select(iteration)
            saved = iteration % recipe.checkpoint_interval == 0 or iteration == recipe.iterations
            if saved:
                self._save(optimizer, iteration)
            if self._stop_requested():
                if not saved:
                    self._save(optimizer, iteration)
                if bar is not None:
                    bar.close()
                raise TrainingStopped(iteration, self.ckpt_path)
            if self.stop_after is not None and iteration - start >= self.stop_after:
                break
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        done = iteration - start
        return TrainResult(
            iterations=iteration, resumed_from=start or None, seconds=seconds,
            final_losses={k: float(v.detach()) for k, v in losses.items()},
            images_per_second=done * recipe.batch_size / seconds if seconds > 0 else math.nan,
            selection=dict(self.selection) if self.validate else None,
        )
