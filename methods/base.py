"""The `Method` interface every DGSS method implements, and the training recipe it carries.

A method is an ``nn.Module`` built from a typed config. The runner only ever talks to it through:

- ``training_step(images, labels) -> dict`` of named, already-weighted scalar losses (summed by the runner);
- ``predict(images) -> scores [B, C, H, W]`` per-class scores at the input size;
- ``param_groups(recipe)`` optimizer groups with LR / weight-decay multipliers;
- ``checkpoint_state_dict()`` / ``load_checkpoint(...)`` (trainable state only, with a key report);
- ``load_pretrained(weights_dir)`` official backbone/text weights from the weights folder.

Images reach the method as float32 RGB in 0..255 (not normalised): each method normalises with its own
mean/std (ImageNet for DINOv2, CLIP's for CLIP/EVA02-CLIP).
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor, nn

from methods.weights import KeyReport, MissingWeightsError, locate

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)

SCALES = ("paper", "miniature")
"""``paper``: the configuration of the paper (ViT-L, 512 crops, 20k-40k iterations);
``miniature``: a small configuration fit for a CPU, used on the built-in miniature benchmark and in tests."""


@dataclass(frozen=True)
class ParamRule:
    """mmseg-style ``paramwise_cfg`` custom key: parameters whose name contains ``key`` get these multipliers."""

    key: str
    lr_mult: float = 1.0
    decay_mult: float = 1.0


@dataclass(frozen=True)
class TrainRecipe:
    """Everything about training that a paper fixes. One per method x source x scale."""

    iterations: int = 40000
    batch_size: int = 4
    optimizer: str = "adamw"  # "adamw" | "sgd"
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9  # SGD only
    param_rules: tuple[ParamRule, ...] = ()
    norm_decay_mult: float = 0.0  # weight decay multiplier of normalisation layers' parameters
    schedule: str = "poly"  # "poly" | "constant"
    power: float = 0.9
    min_lr: float = 0.0
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    constant_iters: int = 0  # VLTSeg: constant LR before the poly decay starts
    # poly progress: "mmcv" (1 - t / T), mmseg 0.x's PolyLrUpdaterHook and FAMix's PolyLR; "mmengine"
    # (1 - t / (T - 1)), mmseg 1.x's PolyLR (Rein, SET, Vireo, VLTSeg), which reaches the minimum at the last step
    poly_convention: str = "mmcv"
    grad_clip: float | None = None  # max L2 norm
    crop_size: tuple[int, int] = (512, 512)
    augmentation: dict[str, Any] = field(default_factory=dict)  # datasets.transforms.TrainAugmentation kwargs
    gta_split: str = "all"  # decisions.md §5: "all" (Rein lineage) or "train" (RobustNet list)
    eval_variant: str = "default"  # the paper's own evaluation variant name
    # DAFormer-style rare-class sampling, e.g. dict(class_temp=100.0, min_pixels=3000, min_crop_ratio=0.5)
    # (datasets.sampling.RareClassSampling keys); None = uniform sampling
    rare_class_sampling: dict[str, Any] | None = None
    # checkpoint selection (FAMix's released code): every N iterations and at the end, score the protocol's
    # source validation split (the rPD reference) and keep the best model; 0 = the last iterate
    select_interval: int = 0
    checkpoint_interval: int = 2000
    log_interval: int = 50
    source: str = ""  # where the recipe comes from (config file of the reference code)

    def replace(self, **changes: Any) -> "TrainRecipe":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass
class MethodConfig:
    """Base of every method config: the fields the runner reads."""

    backbone: str = ""
    scale: str = "paper"
    num_classes: int = 19
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD


class Method(nn.Module, abc.ABC):
    """Base class of all methods. Subclasses set ``name`` and implement the abstract methods."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    backbones: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: MethodConfig):
        super().__init__()
        self.config = config
        self.register_buffer("_mean", torch.tensor(config.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(config.image_std).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    @abc.abstractmethod
    def default_config(cls, backbone: str | None = None, *, scale: str = "paper") -> MethodConfig:
        """The paper's configuration (``scale="paper"``) or the CPU-sized one (``"miniature"``)."""

    @classmethod
    @abc.abstractmethod
    def recipe(cls, *, source: str = "gta5", scale: str = "paper", backbone: str | None = None) -> TrainRecipe:
        """The paper's training recipe for this source domain (or its CPU-sized twin)."""

    @classmethod
    def config_for_source(cls, config: MethodConfig, source: str) -> MethodConfig:
        """Hook: adapt a config to the source domain it trains on (e.g. FAMix freezes more of the backbone for
        synthetic sources than for Cityscapes). The runner calls it after ``default_config``. Identity here."""
        return config

    def prepare(self, train_dataset: Any, cache_dir: Path | None, log: Any = print, *, seed: int = 0,
                device: torch.device | None = None) -> dict[str, Any] | None:
        """Hook the runner calls once before training, after the official weights are loaded (e.g. FAMix's
        style mining, cached under ``cache_dir``). Returns a small dict for the result record, or None.
        A no-op here."""
        return None

    # ------------------------------------------------------------------ the two calls
    def normalize(self, images: Tensor) -> Tensor:
        return (images - self._mean.to(images.dtype)) / self._std.to(images.dtype)

    @property
    def pad_color(self) -> Tensor:
        """The 0..255 colour that ``normalize`` maps to exactly 0: mmseg pads a crop smaller than the crop size
        *after* normalisation with 0, so the trainer fills padding with this (``datasets.batching``)."""
        return self._mean.reshape(3)

    @abc.abstractmethod
    def training_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Named, weighted scalar losses for one batch (images 0..255 [B,3,H,W], labels [B,H,W])."""

    @abc.abstractmethod
    def predict(self, images: Tensor) -> Tensor:
        """Per-class scores [B, num_classes, H, W] at the input size."""

    # ------------------------------------------------------------------ optimisation
    def param_groups(self, recipe: TrainRecipe) -> list[dict[str, Any]]:
        """Optimizer groups: one per distinct (lr_mult, decay_mult), mmseg paramwise_cfg semantics.

        The first matching ``ParamRule`` (substring of the parameter name) sets the multipliers;
        parameters of normalisation layers get ``recipe.norm_decay_mult`` unless a rule matched.
        """
        norm_params = {
            id(p)
            for m in self.modules()
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm))
            for p in m.parameters(recurse=False)
        }
        groups: dict[tuple[float, float], dict[str, Any]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            lr_mult, decay_mult = 1.0, 1.0
            rule = next((r for r in recipe.param_rules if r.key in name), None)
            if rule is not None:
                lr_mult, decay_mult = rule.lr_mult, rule.decay_mult
            elif id(param) in norm_params:
                decay_mult = recipe.norm_decay_mult
            if lr_mult == 0.0:
                continue
            group = groups.setdefault(
                (lr_mult, decay_mult),
                {"params": [], "names": [], "lr_mult": lr_mult, "decay_mult": decay_mult,
                 "lr": recipe.lr * lr_mult, "weight_decay": recipe.weight_decay * decay_mult},
            )
            group["params"].append(param)
            group["names"].append(name)
        return list(groups.values())

    # ------------------------------------------------------------------ weights and checkpoints
    def trainable_keys(self) -> set[str]:
        """State-dict keys that a checkpoint must carry (trainable parameters and the method's own buffers)."""
        persistent = self.state_dict().keys()
        keys = {n for n, p in self.named_parameters() if p.requires_grad}
        keys |= {n for n, _ in self.named_buffers() if n in persistent and not self._is_frozen_buffer(n)}
        return keys

    def _is_frozen_buffer(self, name: str) -> bool:
        """Buffers of frozen submodules (e.g. a frozen backbone's rope tables) are not checkpointed."""
        module_name = name.rsplit(".", 1)[0] if "." in name else ""
        try:
            module = self.get_submodule(module_name)
        except AttributeError:
            return False
        params = list(module.parameters())
        return bool(params) and not any(p.requires_grad for p in params)

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """The trainable state only (frozen backbones come from the official files)."""
        keep = self.trainable_keys()
        return {k: v for k, v in self.state_dict().items() if k in keep}

    def load_checkpoint(self, state: Mapping[str, Tensor] | str | Path, *, strict: bool = False) -> KeyReport:
        """Load a (trainable-only or full) state dict; report missing trainable keys and unexpected keys."""
        if not isinstance(state, Mapping):
            state = torch.load(Path(state), map_location="cpu", weights_only=False)
        for wrapper in ("model", "state_dict"):  # our checkpoints / mmseg's: the state dict sits under a key
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
                break
        state = self.convert_checkpoint(dict(state))
        own = self.state_dict()
        unexpected = sorted(k for k in state if k not in own)
        required = self.trainable_keys()
        missing = sorted(k for k in required if k not in state)
        shape_errors = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape)
        ]
        if shape_errors:
            raise ValueError("checkpoint shapes do not match the model:\n  " + "\n  ".join(shape_errors))
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        report = KeyReport(missing=missing, unexpected=unexpected, converted=[])
        if strict and not report.ok():
            raise ValueError(f"checkpoint does not match {self.name}: {report.summary()}")
        return report

    def convert_checkpoint(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Hook: map an official released checkpoint's keys to this implementation's. Identity by default."""
        return state

    @classmethod
    def pretrained_files(cls, config: Any) -> tuple[str, ...]:
        """The official files ``config`` loads, known before any model is built (a run's identity keeps the
        sha256 of these and of no others). Subclasses fill this; :meth:`pretrained_loaders` maps the same
        names to their loaders."""
        return ()

    def pretrained_loaders(self) -> dict[str, Any]:
        """Map official file name -> callable(path) -> KeyReport that loads it. Subclasses fill this."""
        return {}

    def load_pretrained(self, weights_dir: Path | None, *, allow_random_init: bool) -> dict[str, Any]:
        """Load every official file this config needs. Missing files: error unless ``allow_random_init``.

        Returns ``{"pretrained": bool, "files": {name: {"found", "path", "report"}}}`` for the result record.
        """
        files: dict[str, Any] = {}
        all_found = True
        for file, loader in self.pretrained_loaders().items():
            path = locate(weights_dir, file)
            if path is None:
                all_found = False
                if not allow_random_init:
                    raise MissingWeightsError(file, weights_dir)
                files[file] = {"found": False, "path": None, "report": None}
                continue
            report = loader(path)
            files[file] = {"found": True, "path": str(path), "report": report.summary()}
        return {"pretrained": all_found and bool(files), "files": files}

    # ------------------------------------------------------------------ bookkeeping
    def parameter_summary(self) -> dict[str, Any]:
        """Total / trainable parameter counts, and per top-level submodule."""
        per_module: dict[str, dict[str, int]] = {}
        for name, p in self.named_parameters():
            top = name.split(".", 1)[0]
            entry = per_module.setdefault(top, {"total": 0, "trainable": 0})
            entry["total"] += p.numel()
            if p.requires_grad:
                entry["trainable"] += p.numel()
        return {
            "total": sum(e["total"] for e in per_module.values()),
            "trainable": sum(e["trainable"] for e in per_module.values()),
            "per_module": per_module,
        }

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)
