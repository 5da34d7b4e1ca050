"""FAMix: Freeze, Augment and Mix (Fahes et al., CVPR 2024; reference code astra-vision/FAMix, plain PyTorch).

What the paper calls a thing, and where it lives here (shared/specs/methods.md §4):

- **Backbone** ``backbone``: the OpenAI CLIP ResNet-50 / ResNet-101 image tower
  (:class:`methods.backbones.resnet.CLIPResNet`) without its attention pool, at output stride 16: ``layer4``
  keeps stride 1 and is dilated instead. FAMix's dilation pattern is kept: only the *last* block of the
  dilated stage uses the new rate, so ``layer4``'s blocks run at dilations (1, 1, 2) (the reference
  ``_make_layer``; torchvision would use (1, 2, 2)). Weights are CLIP's, unchanged.
- **Decoder** ``decode_head``: DeepLabv3+ of the DeepLabV3Plus-Pytorch lineage
  (:class:`methods.heads.deeplabv3plus.DeepLabV3PlusHead`): ASPP 6/12/18 + image pooling on ``layer4``,
  low-level projection of ``layer1`` to 48 ch, 3x3 conv 304 -> 256, 1x1 classifier; logits at stride 4,
  upsampled bilinearly (``align_corners=False``, as in the reference forward) to the input size.
- **Freeze** (``train_layer4``, set per source by :meth:`FAMix.config_for_source`): for synthetic sources
  (GTA5, SYNTHIA) only ``layer4[-1]`` (``layer4[2]`` of RN50/RN101) and the decoder train (``"last"``); for
  Cityscapes all of ``layer4`` trains (``"all"``). Frozen parts keep BatchNorm in eval mode (``train()`` puts
  only the trainable part and the decoder in training mode, like the reference's ``layer4[2].train()``).
- **Augment** = language-driven patch-wise style mining (:func:`mine_styles`, the reference ``patch_PIN.py``),
  run once by :meth:`FAMix.prepare` before training and cached on disk (:class:`StyleBank`): for crops of the
  training set (768 px, batches of 16, one pass) the stride-4 ``layer1`` map is cut into a 3x3 grid; each
  patch's majority class is read from the matching label patch; for each distinct class of a batch (its first
  patch, in patch-major order) a target text "<random style> <class>" ("photo" for the ignore class 255) is
  encoded with CLIP's text tower, averaged over the 80 ImageNet templates (mean of the *raw* per-template
  embeddings, then normalised, as the reference does). Patch-wise instance normalisation (PIN,
  :class:`PatchPIN`) re-styles the normalised patch with learnable per-channel (mu, sigma) initialised to the
  patch statistics, then ReLU; the patch is average-pooled to 56x56 (``image_size // 4``) and pushed through
  CLIP's layers 2-4 in CLIP's own geometry (no dilation) and the **attention pool** (kept for this, ``attnpool``);
  (mu, sigma) minimise 1 - cos(image embedding, text embedding) with SGD (lr 1.0, momentum 0.9, wd 1e-4) for
  100 steps per batch and are appended to that class's bank.
- **Mix** (:func:`patch_style_mix`, the reference ``network/utils.py``): in training, the ``layer1`` map is cut
  into the same 3x3 grid, each patch normalised by its own statistics; for each patch a (mu_t, sigma_t) is
  drawn uniformly from the bank of the patch's majority class (the 255 bank when that bank is empty); the
  statistics are mixed, mu_mix = s mu + (1 - s) mu_t and sigma likewise, with **s ~ Beta(0.1, 0.1) drawn per
  sample and per channel** (shape [B, C, 1, 1], shared by the nine patches as in the reference;
  ``mix_s_per_patch=True`` draws one per patch); the patch is de-normalised with the mixed statistics and
  passed through ReLU. The stylised map feeds both ``layer2`` and the decoder's low-level skip. Statistics are
  per-sample, per-channel mean and sqrt(unbiased variance + 1e-5) (the reference ``calc_mean_std``).
- **Loss**: cross-entropy with label smoothing 0.1, ignore 255 (``loss_ce``).

Choices and documented differences:

- The 20 style phrases (:data:`FAMIX_STYLES`) are **ours**, written in the form the paper describes
  ("<Adjective> <Noun> style", e.g. "Cyberpunk Cityscape style"); the authors' exact list is in their
  ``patch_PIN.py``: pass it as ``StyleMiningConfig(styles=...)`` to reproduce the released banks exactly.
- Ties of the majority class go to the smallest class id. A patch whose class bank and the 255 bank are both
  empty keeps its own statistics (the reference would fail).
- Mining crops are random crops of the raw training images (no rescaling, no flip, no colour jitter: the
  reference mines without ``--data_aug``); images smaller than the crop are padded (image 0, label 255).
- The style bank is keyed by (weights identity, training-set fingerprint, mining hyper-parameters, seed) and
  stored as ``<cache>/famix_styles/<key>.pt`` (+ ``<key>.json`` with the inputs); a second run with the same
  inputs reuses it. It is not part of model checkpoints.
- The reference poly schedule is ``max(base * (1 - t)^0.9, 1e-6)``; the harness's is
  ``(base - 1e-6) * (1 - t)^0.9 + 1e-6`` (differences below 1e-6).
- Reference SYNTHIA augmentation (RandomSizeAndCrop 720 at scale 0.5-2, resized to 768) is expressed as a
  rescale by 0.5-2 x 768/720 followed by a 768 crop (same geometry; bilinear instead of bicubic).

Official checkpoints: the released FAMix files are ``torch.save({"cur_itrs", "model_state", "optimizer_state",
"scheduler_state", "best_score"})`` of the reference ``_Segmentation`` model: ``backbone.*`` (CLIP names, no
attention pool) and ``classifier.{project, aspp, classifier}.*``. :meth:`FAMix.convert_checkpoint` maps
``classifier.`` -> ``decode_head.`` (:func:`convert_famix_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.labels import CITYSCAPES_CLASSES, IGNORE_INDEX
from methods.backbones.resnet import AttentionPool2d, CLIPResNet, CLIPResNetConfig, clip_resnet_config, load_clip_resnet
from methods.backbones.text import IMAGENET_TEMPLATES, CLIPTextEncoder, TextEncoderConfig, text_config
from methods.base import CLIP_MEAN, CLIP_STD, Method, MethodConfig, ParamRule, TrainRecipe
from methods.heads.deeplabv3plus import DeepLabV3PlusConfig, DeepLabV3PlusHead
from methods.registry import register_method
from methods.weights import KeyReport, cached_sha256, default_hash_cache

__all__ = [
    "FAMIX_BACKBONES",
    "FAMIX_STYLES",
    "FAMix",
    "FAMixConfig",
    "PatchPIN",
    "StyleBank",
    "StyleMiningConfig",
    "calc_mean_std",
    "convert_famix_checkpoint",
    "dataset_fingerprint",
    "famix_recipe",
    "grid_bounds",
    "mine_styles",
    "patch_majority_classes",
    "patch_style_mix",
    "sample_mixing_weights",
    "style_bank_key",
]

FAMIX_BACKBONES: dict[str, str] = {"clip_rn101": "RN101", "clip_rn50": "RN50"}
"""Harness backbone name -> CLIP model (image tower, text tower and official file ``<name>.pt``)."""

FAMIX_STYLES: tuple[str, ...] = (
    "Cyberpunk Cityscape style",
    "Foggy Harbour Dawn style",
    "Neon Night Market style",
    "Sepia Daguerreotype style",
    "Desert Sandstorm style",
    "Frozen Tundra style",
    "Tropical Monsoon style",
    "Oil Painting Impressionism style",
    "Charcoal Sketch style",
    "Ukiyo-e Woodblock style",
    "Art Deco Poster style",
    "Low Poly Render style",
    "Infrared Photograph style",
    "Autumn Twilight style",
    "Stained Glass Mosaic style",
    "Comic Book Ink style",
    "Volcanic Ash style",
    "Vaporwave Sunset style",
    "Moonlit Blizzard style",
    "Gothic Cathedral Gloom style",
)
"""20 fixed style phrases for the mining prompts "<style> <class>". Ours, in the paper's form; the authors'
exact list is in the reference ``patch_PIN.py`` (see the module docstring)."""

STYLE_BANK_VERSION = "famix-style-bank-1"
"""Bump when the mining algorithm changes (part of the cache key)."""

TRAIN_LAYER4 = ("last", "all", "none")


# ============================================================================================== configs
@dataclass(frozen=True)
class StyleMiningConfig:
    """Hyper-parameters of the style-mining pass (reference ``patch_PIN.py`` defaults).

    ``pool_size`` None: CLIP's ``image_size // 4`` (56 for RN50/RN101), the layer1 size of a CLIP input, so
    layers 2-4 end on the attention pool's pretraining grid. ``max_images`` None: one pass over the split.
    """

    crop_size: int = 768
    batch_size: int = 16
    steps: int = 100
    lr: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grid: int = 3
    pool_size: int | None = None
    eps: float = 1e-5
    styles: tuple[str, ...] = FAMIX_STYLES
    ignore_prompt: str = "photo"
    templates: tuple[str, ...] = IMAGENET_TEMPLATES
    max_images: int | None = None

    def __post_init__(self) -> None:
        if self.crop_size % (4 * self.grid):
            raise ValueError(f"mining crop_size {self.crop_size} must be divisible by 4 x grid ({4 * self.grid}) so "
                             f"the stride-4 layer1 map splits into equal patches (the reference: 768 = 4 x 3 x 64)")
        if not self.styles:
            raise ValueError("at least one style phrase is needed")


@dataclass
class FAMixConfig(MethodConfig):
    resnet: CLIPResNetConfig | None = None
    head: DeepLabV3PlusConfig = field(default_factory=DeepLabV3PlusConfig)
    text: TextEncoderConfig | None = None  # used only by the style mining
    mining: StyleMiningConfig = field(default_factory=StyleMiningConfig)
    train_layer4: str = "last"  # "last" (G/S sources), "all" (Cityscapes), "none"
    style_mixing: bool = True
    grid: int = 3
    beta: float = 0.1  # s ~ Beta(beta, beta)
    mix_s_per_patch: bool = False
    stats_eps: float = 1e-5
    label_smoothing: float = 0.1
    class_names: tuple[str, ...] = CITYSCAPES_CLASSES
    text_init_seed: int = 0  # text tower initialisation when no official file is loaded (miniature / random init)

    def __post_init__(self) -> None:
        if isinstance(self.resnet, dict):
            self.resnet = CLIPResNetConfig(**{**self.resnet, "layers": tuple(self.resnet["layers"])})
        if isinstance(self.head, dict):
            self.head = DeepLabV3PlusConfig(**{**self.head, "aspp_rates": tuple(self.head["aspp_rates"])})
        if isinstance(self.text, dict):
            self.text = TextEncoderConfig(**self.text)
        if isinstance(self.mining, dict):
            self.mining = StyleMiningConfig(**{k: tuple(v) if isinstance(v, list) else v
                                               for k, v in self.mining.items()})
        if self.train_layer4 not in TRAIN_LAYER4:
            raise ValueError(f"train_layer4 must be one of {TRAIN_LAYER4}, got {self.train_layer4!r}")


# ============================================================================================== statistics
def calc_mean_std(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and std of [N, C, H, W] -> ([N, C, 1, 1], [N, C, 1, 1]); std is
    sqrt(unbiased variance + eps) (the reference ``calc_mean_std``)."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    return flat.mean(dim=2).view(n, c, 1, 1), (flat.var(dim=2) + eps).sqrt().view(n, c, 1, 1)


def grid_bounds(size: int, grid: int) -> list[tuple[int, int]]:
    """[start, end) of the ``grid`` equal(ish) cells along an axis of ``size`` (cell i: i*size//grid ...)."""
    return [(i * size // grid, (i + 1) * size // grid) for i in range(grid)]


def _cells(h: int, w: int, grid: int) -> list[tuple[int, int, int, int]]:
    """Row-major (patch p = row * grid + col) cells (r0, r1, c0, c1)."""
    return [(r0, r1, c0, c1) for r0, r1 in grid_bounds(h, grid) for c0, c1 in grid_bounds(w, grid)]


def patch_majority_classes(labels: Tensor, grid: int = 3) -> Tensor:
    """Majority class of each cell of a ``grid`` x ``grid`` split of labels [B, H, W] -> [B, grid*grid]
    (row-major; the ignore id 255 counts as a class; ties go to the smallest id)."""
    b, h, w = labels.shape
    out = []
    for r0, r1, c0, c1 in _cells(h, w, grid):
        cell = labels[:, r0:r1, c0:c1].reshape(b, -1).clamp(0, 255)
        counts = torch.zeros(b, 256, device=labels.device, dtype=torch.int64)
        counts.scatter_add_(1, cell, torch.ones_like(cell))
        out.append(counts.argmax(dim=1))
    return torch.stack(out, dim=1)


def sample_mixing_weights(shape: Sequence[int], alpha: float = 0.1, device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """s ~ Beta(alpha, alpha) of ``shape`` (U-shaped for alpha < 1: mostly near 0 or 1)."""
    conc = torch.tensor(float(alpha), device=device, dtype=dtype)
    return torch.distributions.Beta(conc, conc).sample(tuple(shape))


def patch_style_mix(feat: Tensor, target_mu: Tensor, target_sigma: Tensor, s: Tensor, *, grid: int = 3,
                    eps: float = 1e-5, valid: Tensor | None = None, relu: bool = True) -> Tensor:
    """FAMix's style mixing of a feature map [B, C, H, W].

    Each cell p of the row-major ``grid`` x ``grid`` split is normalised by its own per-sample, per-channel
    statistics (mu, sigma) and de-normalised with mu_mix = s mu + (1 - s) mu_t, sigma_mix = s sigma +
    (1 - s) sigma_t, where (mu_t, sigma_t) = ``target_mu[:, p]``, ``target_sigma[:, p]`` ([B, P, C]) and
    ``s`` is [B, C, 1, 1] (shared by the cells) or [P, B, C, 1, 1] (one per cell). Cells where ``valid``
    [B, P] is False keep their statistics. ReLU at the end (``relu=False`` returns the pre-activation map).
    """
    b, c, h, w = feat.shape
    dtype = feat.dtype
    x = feat.float()
    out = torch.empty_like(x)
    for p, (r0, r1, c0, c1) in enumerate(_cells(h, w, grid)):
        cell = x[:, :, r0:r1, c0:c1]
        mu, sigma = calc_mean_std(cell, eps)
        sp = (s[p] if s.dim() == 5 else s).float()
        mu_t = target_mu[:, p].float().view(b, c, 1, 1)
        sigma_t = target_sigma[:, p].float().view(b, c, 1, 1)
        if valid is not None:
            keep = ~valid[:, p].view(b, 1, 1, 1)
            mu_t, sigma_t = torch.where(keep, mu, mu_t), torch.where(keep, sigma, sigma_t)
        mu_mix = sp * mu + (1 - sp) * mu_t
        sigma_mix = sp * sigma + (1 - sp) * sigma_t
        out[:, :, r0:r1, c0:c1] = (cell - mu) / sigma * sigma_mix + mu_mix
    return (F.relu(out) if relu else out).to(dtype)


# ============================================================================================== the bank
class StyleBank:
    """Per-class banks of mined styles: entry i is (``mu[i]``, ``sigma[i]``) [C] of class ``classes[i]``
    (a train id, or 255 for the ignore class / "photo"). Entries are kept sorted by class."""

    def __init__(self, mu: Tensor, sigma: Tensor, classes: Tensor, meta: Mapping[str, Any] | None = None):
        if mu.shape != sigma.shape or mu.dim() != 2 or classes.shape != (mu.shape[0],):
            raise ValueError(f"StyleBank needs mu/sigma [N, C] and classes [N]; got {tuple(mu.shape)}, "
                             f"{tuple(sigma.shape)}, {tuple(classes.shape)}")
        order = torch.argsort(classes.cpu(), stable=True)
        self.mu = mu.detach().float().cpu()[order].contiguous()
        self.sigma = sigma.detach().float().cpu()[order].contiguous()
        self.classes = classes.detach().long().cpu()[order].contiguous()
        self.meta = dict(meta or {})
        self._device_cache: dict[torch.device, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    @classmethod
    def from_entries(cls, entries: Mapping[int, Sequence[tuple[Tensor, Tensor]]], channels: int,
                     meta: Mapping[str, Any] | None = None) -> "StyleBank":
        """From {class id: [(mu [C], sigma [C]), ...]}."""
        mus, sigmas, classes = [], [], []
        for k, items in entries.items():
            for mu, sigma in items:
                mus.append(mu.reshape(-1).float().cpu())
                sigmas.append(sigma.reshape(-1).float().cpu())
                classes.append(int(k))
        if not mus:
            return cls(torch.zeros(0, channels), torch.zeros(0, channels), torch.zeros(0, dtype=torch.long), meta)
        return cls(torch.stack(mus), torch.stack(sigmas), torch.tensor(classes, dtype=torch.long), meta)

    def __len__(self) -> int:
        return int(self.classes.numel())

    @classmethod
    def synthetic(cls, channels: int, *, per_class: int = 4, seed: int = 0) -> "StyleBank":
        """Random styles (mu ~ N(0, 1), sigma ~ U(0.5, 1.5)), ``per_class`` for each train id and 255: same
        shapes and sampling cost as a mined bank, for timing (``runners.speed``), never for training."""
        g = torch.Generator().manual_seed(seed)
        classes = torch.tensor([c for c in (*range(19), 255) for _ in range(per_class)], dtype=torch.long)
        mu = torch.randn(len(classes), channels, generator=g)
        sigma = 0.5 + torch.rand(len(classes), channels, generator=g)
        return cls(mu, sigma, classes, {"synthetic": True})

    @property
    def channels(self) -> int:
        return int(self.mu.shape[1])

    def counts(self) -> dict[int, int]:
        """Entries per class id (classes with none are left out)."""
        ids, n = torch.unique(self.classes, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, n)}

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if device not in self._device_cache:
            counts = torch.bincount(self.classes, minlength=256)[:256]
            offsets = torch.cumsum(counts, 0) - counts
            self._device_cache[device] = (self.mu.to(device), self.sigma.to(device), counts.to(device),
                                          offsets.to(device))
        return self._device_cache[device]

    def sample(self, classes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For class ids [...] draw one entry each, uniformly from that class's bank (from the 255 bank when it is
        empty) -> (mu [..., C], sigma [..., C], valid [...]); ``valid`` is False where both banks are empty.
        Uses the global torch RNG of ``classes.device``."""
        device = classes.device
        mu, sigma, counts, offsets = self._tables(device)
        cls_ = classes.long().clamp(0, 255)
        eff = torch.where(counts[cls_] > 0, cls_, torch.full_like(cls_, IGNORE_INDEX))
        n = counts[eff]
        valid = n > 0
        draw = (torch.rand(cls_.shape, device=device) * n.clamp(min=1)).long().clamp(max=(n - 1).clamp(min=0))
        idx = torch.where(valid, offsets[eff] + draw, torch.zeros_like(draw))
        if len(self) == 0:
            zeros = torch.zeros(*cls_.shape, self.channels, device=device)
            return zeros, torch.ones_like(zeros), valid
        return mu[idx], sigma[idx], valid

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """Atomically write ``path`` (a ``torch.save`` dict of tensors + JSON metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        os.close(fd)
        torch.save({"mu": self.mu, "sigma": self.sigma, "classes": self.classes,
                    "meta_json": json.dumps(self.meta, sort_keys=True, default=str)}, tmp)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "StyleBank":
        try:
            obj = torch.load(Path(path), map_location="cpu", weights_only=True)
            return cls(obj["mu"], obj["sigma"], obj["classes"], json.loads(obj.get("meta_json", "{}")))
        except Exception as err:  # noqa: BLE001 - name the file and the fix
            raise ValueError(f"cannot read the FAMix style bank {path}: {err}. Expected a file written by "
                             f"StyleBank.save (keys mu, sigma, classes, meta_json); delete it to mine again.") from err


# ============================================================================================== mining
class PatchPIN(nn.Module):
    """Patch-wise instance normalisation with learnable style: the (detached) patches [N, C, h, w] are
    normalised by their own statistics; ``forward`` returns ReLU(x_norm * sigma + mu) with learnable
    ``style_mean`` / ``style_std`` [N, C, 1, 1] initialised to those statistics."""

    def __init__(self, patches: Tensor, eps: float = 1e-5):
        super().__init__()
        patches = patches.detach().float()
        mu, sigma = calc_mean_std(patches, eps)
        self.register_buffer("normalized", (patches - mu) / sigma, persistent=False)
        self.style_mean = nn.Parameter(mu.clone())
        self.style_std = nn.Parameter(sigma.clone())

    def forward(self) -> Tensor:
        return F.relu(self.normalized * self.style_std + self.style_mean)


def _raw_sample(dataset: Any, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [H, W, 3], label uint8 [H, W]) of sample ``index`` before any training transform."""
    sample = dataset.load(index) if hasattr(dataset, "load") else dataset[index]
    image, label = sample["image"], sample["label"]
    if isinstance(image, Tensor):  # already transformed: [3, H, W] 0..255 (uint8, or float)
        image = image.detach().permute(1, 2, 0).float().clamp(0, 255).round().to(torch.uint8).cpu().numpy()
    if isinstance(label, Tensor):
        label = label.detach().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return np.asarray(image, dtype=np.uint8), np.asarray(label, dtype=np.uint8)


def _random_crop(image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator):
    h, w = label.shape
    if h < size or w < size:  # pad (image 0, label ignore) as the reference's crops always fit GTA5
        ph, pw = max(size - h, 0), max(size - w, 0)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
        h, w = label.shape
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return image[y:y + size, x:x + size], label[y:y + size, x:x + size]


def _pair_lines(dataset: Any):
    """One line per sample of a ``SegmentationDataset`` (or a concatenation of them): dataset name,
    root-relative image and label paths with their file sizes."""
    parts = getattr(dataset, "parts", None)
    if parts:
        for part in parts:
            yield from _pair_lines(part)
        return
    root = Path(getattr(dataset, "root", "/"))

    def rel(path: Path | None) -> str:
        if path is None:
            return "-"
        path = Path(path)
        try:
            name = str(path.relative_to(root))
        except ValueError:
            name = path.name
        try:
            return f"{name}:{path.stat().st_size}"
        except OSError:
            return f"{name}:?"

    for pair in dataset.pairs:
        yield f"{getattr(dataset, 'name', '')}|{rel(pair.image)}|{rel(pair.label)}\n"


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """What identifies a training split for the style-bank key: dataset name, split, size and a sha256 over
    the root-relative image/label paths and file sizes (``SegmentationDataset.pairs``, also through
    ``ConcatSegmentationDataset``), or over the raw samples' bytes for other datasets."""
    h = hashlib.sha256()
    info: dict[str, Any] = {"type": type(dataset).__name__, "name": getattr(dataset, "name", None),
                            "split": getattr(dataset, "split", None), "num_images": len(dataset)}
    if getattr(dataset, "pairs", None) is not None:
        for line in _pair_lines(dataset):
            h.update(line.encode())
        info["files_sha256"] = h.hexdigest()
    else:
        for i in range(len(dataset)):
            image, label = _raw_sample(dataset, i)
            h.update(np.ascontiguousarray(image).tobytes())
            h.update(np.ascontiguousarray(label).tobytes())
        info["samples_sha256"] = h.hexdigest()
    return info


def style_bank_key(inputs: Mapping[str, Any]) -> str:
    """Cache key of a style bank: sha256 (first 16 hex) of the canonical JSON of its inputs."""
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@torch.no_grad()
def _text_targets(texts: Sequence[str], encoder: CLIPTextEncoder, templates: Sequence[str],
                  cache: dict[str, Tensor]) -> Tensor:
    """Normalised mean over ``templates`` of the raw CLIP text embeddings of each text -> [N, E] (the
    reference averages ``encode_text`` over the templates, then normalises)."""
    new = [t for t in dict.fromkeys(texts) if t not in cache]
    if new:
        emb = encoder.encode([tpl.format(t) for t in new for tpl in templates], normalize=False).float()
        for text, mean in zip(new, emb.view(len(new), len(templates), -1).mean(dim=1)):
            cache[text] = F.normalize(mean, dim=-1)
    return torch.stack([cache[t] for t in texts])


def mine_styles(tower: CLIPResNet, attnpool: AttentionPool2d, text_encoder: CLIPTextEncoder, dataset: Any,
                cfg: StyleMiningConfig, *, normalize: Callable[[Tensor], Tensor], class_names: Sequence[str],
                seed: int = 0, device: torch.device | str = "cpu", log: Callable[[str], None] = print,
                meta: Mapping[str, Any] | None = None) -> StyleBank:
    """One pass of FAMix's language-driven patch-wise style mining over ``dataset`` -> :class:`StyleBank`.

    ``tower`` / ``attnpool`` are CLIP's (frozen, eval mode during the pass); ``normalize`` maps 0..255 images
    to the tower's input. Randomness (order, crops, style phrases) comes from ``seed`` only.
    """
    device = torch.device(device)
    n = len(dataset)
    if n == 0:
        raise ValueError("style mining needs a non-empty training split")
    order = np.random.default_rng([seed, 0]).permutation(n)
    if cfg.max_images is not None:
        order = order[:cfg.max_images]
    bs = cfg.batch_size
    num_batches = max(1, len(order) // bs)  # the reference drops the last partial batch (drop_last=True)
    pool = cfg.pool_size or tower.cfg.image_size // 4
    entries: dict[int, list[tuple[Tensor, Tensor]]] = {}
    text_cache: dict[str, Tensor] = {}
    modes = (tower.training, attnpool.training, text_encoder.training)
    tower.eval(), attnpool.eval(), text_encoder.eval()
    t0 = time.perf_counter()
    losses_first, losses_last = [], []
    try:
        for bi in range(num_batches):
            rng = np.random.default_rng([seed, 1, bi])
            idx = order[bi * bs:(bi + 1) * bs]
            crops = [_random_crop(*_raw_sample(dataset, int(i)), cfg.crop_size, rng) for i in idx]
            images = torch.from_numpy(np.stack([c[0] for c in crops])).permute(0, 3, 1, 2).float().to(device)
            labels = torch.from_numpy(np.stack([c[1] for c in crops])).long().to(device)
            with torch.no_grad():
                f1 = tower.forward_stage(1, tower.stem(normalize(images)), clip_geometry=True).float()
            majority = patch_majority_classes(labels, cfg.grid)  # [B, P]
            b, _, h, w = f1.shape
            cells = _cells(h, w, cfg.grid)
            # the first patch of each distinct class, in patch-major order (p, then b) as the reference
            first: dict[int, tuple[int, int]] = {}
            for p in range(len(cells)):
                for j in range(b):
                    first.setdefault(int(majority[j, p]), (p, j))
            classes = list(first)
            patches = torch.stack([f1[j, :, cells[p][0]:cells[p][1], cells[p][2]:cells[p][3]]
                                   for p, j in first.values()])
            texts = [cfg.ignore_prompt if k == IGNORE_INDEX else
                     f"{cfg.styles[int(rng.integers(len(cfg.styles)))]} {class_names[k]}" for k in classes]
            target = _text_targets(texts, text_encoder, cfg.templates, text_cache).to(device)
            pin = PatchPIN(patches, cfg.eps).to(device)
            params = [pin.style_mean, pin.style_std]
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            for step in range(cfg.steps):
                x = F.adaptive_avg_pool2d(pin(), pool)
                emb = attnpool(tower.forward_stages(x, 2, 4, clip_geometry=True))
                loss = (1 - F.cosine_similarity(emb.float(), target, dim=1)).mean()
                grads = torch.autograd.grad(loss, params)  # never touches the model's own .grad
                for param, grad in zip(params, grads):
                    param.grad = grad
                opt.step()
                if step == 0:
                    losses_first.append(float(loss.detach()))
                if step == cfg.steps - 1:
                    losses_last.append(float(loss.detach()))
            for k, mu, sigma in zip(classes, pin.style_mean.detach(), pin.style_std.detach()):
                entries.setdefault(k, []).append((mu.reshape(-1).cpu(), sigma.reshape(-1).cpu()))
            if bi == 0 or (bi + 1) % max(1, num_batches // 10) == 0 or bi + 1 == num_batches:
                log(f"style mining: batch {bi + 1}/{num_batches}, {sum(map(len, entries.values()))} styles, "
                    f"loss {losses_first[-1]:.4f} -> {losses_last[-1] if losses_last else float('nan'):.4f}, "
                    f"{time.perf_counter() - t0:.1f}s")
    finally:
        tower.train(modes[0]), attnpool.train(modes[1]), text_encoder.train(modes[2])
    info = {**(meta or {}), "num_batches": num_batches, "seconds": round(time.perf_counter() - t0, 2),
            "mean_loss_first_step": float(np.mean(losses_first)) if losses_first else None,
            "mean_loss_last_step": float(np.mean(losses_last)) if losses_last else None}
    return StyleBank.from_entries(entries, tower.cfg.channels[0], info)


# ============================================================================================== checkpoints
def is_famix_reference_checkpoint(state: Mapping[str, Any]) -> bool:
    if isinstance(state.get("model_state"), Mapping):
        return True
    return any(k.startswith(("classifier.aspp.", "module.classifier.aspp.")) for k in state)


def convert_famix_checkpoint(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Released FAMix checkpoint (``{"model_state": ..., "optimizer_state", ...}`` or the bare model state)
    -> (this module's state dict, conversion notes, ignored entries). ``classifier.*`` -> ``decode_head.*``;
    ``backbone.*`` keeps CLIP's names; a ``module.`` (DataParallel) prefix is removed."""
    ignored: list[str] = []
    if isinstance(state.get("model_state"), Mapping):
        ignored = sorted(k for k in state if k != "model_state")
        state = state["model_state"]
    out: dict[str, Tensor] = {}
    renamed = 0
    for key, value in state.items():
        if not isinstance(value, Tensor):
            ignored.append(key)
            continue
        name = key[len("module."):] if key.startswith("module.") else key
        if name.startswith("classifier."):
            name, renamed = "decode_head." + name[len("classifier."):], renamed + 1
        elif name.startswith("backbone.attnpool."):
            name = "attnpool." + name[len("backbone.attnpool."):]
        out[name] = value
    notes = [f"classifier.* -> decode_head.* ({renamed} keys)"] if renamed else []
    return out, notes, ignored


# ============================================================================================== recipe
def famix_recipe(source: str = "gta5", scale: str = "paper") -> TrainRecipe:
    """The reference recipe (``main.py`` defaults with ``--data_aug``; methods.md §4.2) or its CPU-sized twin.

    SGD momentum 0.9, wd 1e-4 on every parameter (BN included); lr 0.1 for the decoder and 0.01 (x0.1) for the
    backbone; poly 0.9 (min 1e-6); 40k iterations of batch 8; crops of 768, no rescaling (GTA5 / Cityscapes),
    ColorJitter(0.8, 0.8, 0.8), horizontal flip; RobustNet GTA5 train split; fp32 in the reference.
    """
    if source not in ("gta5", "synthia", "cityscapes"):
        raise ValueError(f"FAMix has no recipe for source {source!r}; expected gta5, synthia or cityscapes")
    aug: dict[str, Any] = dict(rescale="none", cat_max_ratio=1.0, hflip_prob=0.5, photometric=False,
                               color_jitter=(0.8, 0.8, 0.8))
    if source == "synthia":  # RandomSizeAndCrop(720, scale 0.5-2) then resize to 768 == rescale x768/720, crop 768
        aug.update(rescale="ratio_range", ratio_range=(0.5 * 768 / 720, 2.0 * 768 / 720), base_size=None)
    recipe = TrainRecipe(
        iterations=40000, batch_size=8, optimizer="sgd", lr=0.1, weight_decay=1e-4, momentum=0.9,
        param_rules=(ParamRule("backbone", lr_mult=0.1),), norm_decay_mult=1.0, schedule="poly", power=0.9,
        min_lr=1e-6, warmup_iters=0, grad_clip=None, crop_size=(768, 768), augmentation=aug, gta_split="train",
        eval_variant="famix", checkpoint_interval=750, log_interval=10,
        source="astra-vision/FAMix main.py defaults (--data_aug; utils/get_dataset.py transforms), "
               "styles from patch_PIN.py; paper numbers are the mean of 3 runs (FAMix#5)",
    )
    if scale == "miniature":
        # 600 iterations: at 200 the DeepLabv3+ head had not learnt enough for the stand-in to matter (seed 0: 8.75
        # mean target mIoU with the CLIP ResNet stand-in, 8.76 from random init; at 600: 11.33 vs 10.20)
        recipe = recipe.replace(iterations=600, batch_size=4, crop_size=(192, 192), checkpoint_interval=200,
                                log_interval=20, source="miniature twin of " + recipe.source)
    elif scale != "paper":
        raise ValueError(f"unknown scale {scale!r}: use 'paper' or 'miniature'")
    return recipe


# ============================================================================================== the method
@register_method
class FAMix(Method):
    """FAMix (CVPR 2024): frozen CLIP ResNet (last block(s) tuned) + DeepLabv3+ + language-driven patch-wise
    style mining and mixing on ``layer1``."""

    name = "famix"
    paper = "A Simple Recipe for Language-guided Domain Generalized Segmentation (FAMix, CVPR 2024)"
    config_class = FAMixConfig
    backbones = ("clip_rn101", "clip_rn50")

    config: FAMixConfig

    # ------------------------------------------------------------------ construction
    @classmethod
    def default_config(cls, backbone: str | None = None, *, scale: str = "paper") -> FAMixConfig:
        backbone = backbone or cls.backbones[0]
        if backbone not in FAMIX_BACKBONES:
            raise ValueError(f"FAMix supports backbones {', '.join(cls.backbones)}; got {backbone!r}")
        arch = FAMIX_BACKBONES[backbone]
        if scale == "paper":
            resnet = clip_resnet_config(arch, output_stride=16)
            head = DeepLabV3PlusConfig(in_channels=resnet.channels[3], low_level_channels=resnet.channels[0])
            text = text_config(arch)
            mining = StyleMiningConfig()
        elif scale == "miniature":
            resnet = clip_resnet_config("tiny", output_stride=16, weights_file="CLIP_RN_tiny.pt")
            head = DeepLabV3PlusConfig(in_channels=resnet.channels[3], low_level_channels=resnet.channels[0],
                                       aspp_channels=32, low_level_proj=8, decoder_channels=32)
            # CPU-sized mining: shorter text context (the prompts fit in 32 tokens) and 8 of the 80 templates
            text = text_config("tiny", context_length=32)
            mining = StyleMiningConfig(crop_size=192, batch_size=4, steps=3, templates=IMAGENET_TEMPLATES[:8])
        else:
            raise ValueError(f"unknown scale {scale!r}: use 'paper' or 'miniature'")
        return FAMixConfig(backbone=backbone, scale=scale, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                           resnet=resnet, head=head, text=text, mining=mining)

    @classmethod
    def recipe(cls, *, source: str = "gta5", scale: str = "paper", backbone: str | None = None) -> TrainRecipe:
        return famix_recipe(source, scale)

    @classmethod
    def config_for_source(cls, config: FAMixConfig, source: str) -> FAMixConfig:
        """Synthetic sources (GTA5, SYNTHIA) train ``layer4[-1]`` only; Cityscapes trains all of ``layer4``
        (reference ``utils/freeze.py``: ``freeze_1_2_3_p4`` / ``freeze_1_2_3``)."""
        if source in ("gta5", "synthia"):
            return dataclasses.replace(config, train_layer4="last")
        if source == "cityscapes":
            return dataclasses.replace(config, train_layer4="all")
        return config

    def __init__(self, config: FAMixConfig):
        super().__init__(config)
        cfg = config
        if cfg.resnet is None:
            raise ValueError("FAMixConfig needs a resnet config: use FAMix.default_config")
        if cfg.head.in_channels != cfg.resnet.channels[3] or cfg.head.low_level_channels != cfg.resnet.channels[0]:
            raise ValueError(f"the decoder expects {cfg.head.in_channels}/{cfg.head.low_level_channels} channels; "
                             f"the {cfg.resnet.name} tower gives {cfg.resnet.channels[3]}/{cfg.resnet.channels[0]}")
        if cfg.head.num_classes != len(cfg.class_names):
            raise ValueError(f"{cfg.head.num_classes} classes but {len(cfg.class_names)} class names")
        self.backbone = CLIPResNet(cfg.resnet, attnpool=False)
        self.attnpool = AttentionPool2d(cfg.resnet.image_size // 32, cfg.resnet.feature_dim, cfg.resnet.heads,
                                        cfg.resnet.embed_dim)  # frozen; style mining only
        self.decode_head = DeepLabV3PlusHead(cfg.head)
        self.style_bank: StyleBank | None = None
        self._weights_path: Path | None = None
        self._last_conversion: tuple[list[str], list[str]] = ([], [])
        self.backbone.requires_grad_(False)
        self.attnpool.requires_grad_(False)
        part = self.trainable_backbone_part()
        if part is not None:
            part.requires_grad_(True)
        self.train()

    def trainable_backbone_part(self) -> nn.Module | None:
        """The part of the backbone that trains: ``layer4[-1]`` ("last"), ``layer4`` ("all") or None."""
        mode = self.config.train_layer4
        return {"last": self.backbone.layer4[-1], "all": self.backbone.layer4, "none": None}[mode]

    def train(self, mode: bool = True) -> "FAMix":
        """Frozen parts (and their BatchNorm statistics) stay in eval mode."""
        super().train(mode)
        self.backbone.eval()
        self.attnpool.eval()
        part = self.trainable_backbone_part()
        if part is not None:
            part.train(mode)
        return self

    # ------------------------------------------------------------------ forward
    def extract(self, images: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(layer1 map, layer4 map); with ``labels`` in training mode the layer1 map is style-mixed."""
        low = self.backbone.forward_stage(1, self.backbone.stem(self.normalize(images)))
        if labels is not None and self.config.style_mixing:
            low = self.mix_styles(low, labels)
        return low, self.backbone.forward_stages(low, 2, 4)

    def mix_styles(self, low: Tensor, labels: Tensor) -> Tensor:
        """FAMix's patch-wise style mixing of the layer1 map with styles drawn from the bank."""
        if self.style_bank is None:
            raise RuntimeError("FAMix has no style bank: call method.prepare(train_dataset, cache_dir) (the runner "
                               "does) or method.set_style_bank(bank) before training, or set style_mixing=False")
        cfg = self.config
        b, c = low.shape[:2]
        if self.style_bank.channels != c:
            raise ValueError(f"the style bank has {self.style_bank.channels} channels; layer1 has {c}")
        classes = patch_majority_classes(labels, cfg.grid)  # [B, P]
        mu_t, sigma_t, valid = self.style_bank.sample(classes)
        shape = (cfg.grid * cfg.grid, b, c, 1, 1) if cfg.mix_s_per_patch else (b, c, 1, 1)
        s = sample_mixing_weights(shape, cfg.beta, device=low.device)
        return patch_style_mix(low, mu_t, sigma_t, s, grid=cfg.grid, eps=cfg.stats_eps, valid=valid)

    def logits(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        low, high = self.extract(images, labels)
        out = self.decode_head(high, low)
        return F.interpolate(out, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def training_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        logits = self.logits(images, labels)
        loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX,
                               label_smoothing=self.config.label_smoothing)
        return {"loss_ce": loss}

    def predict(self, images: Tensor) -> Tensor:
        return self.logits(images)

    # ------------------------------------------------------------------ style bank
    def set_style_bank(self, bank: StyleBank | None) -> None:
        self.style_bank = bank

    def weights_identity(self) -> dict[str, Any]:
        """What the mined styles depend on in the weights: the official file's sha256, or (random init) a hash
        of the image tower + attention pool tensors and the text tower's init seed."""
        if self._weights_path is not None:
            return {"file": self._weights_path.name, "sha256": cached_sha256(self._weights_path, default_hash_cache())}
        h = hashlib.sha256()
        for prefix, module in (("backbone.", self.backbone), ("attnpool.", self.attnpool)):
            for key, value in sorted(module.state_dict().items()):
                h.update((prefix + key).encode())
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return {"random_init_sha256": h.hexdigest(), "text_init_seed": self.config.text_init_seed,
                "text": self.config.text.arch if self.config.text else None}

    def mining_text_encoder(self, device: torch.device | str = "cpu",
                            log: Callable[[str], None] = print) -> CLIPTextEncoder:
        """CLIP's text tower for the mining prompts: from the official file when one was loaded, else a
        deterministic random initialisation (``text_init_seed``)."""
        cfg = self.config.text
        if cfg is None:
            raise ValueError("FAMixConfig.text is needed for style mining")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.text_init_seed)
            encoder = CLIPTextEncoder(cfg, frozen=True)
        if self._weights_path is not None:
            report = encoder.load_official(self._weights_path)
            if not report.ok():
                raise ValueError(f"text tower of {self._weights_path}: {report.summary()}")
        else:
            log(f"style mining: no official CLIP file loaded; the {cfg.arch} text tower is randomly initialised")
        return encoder.to(device)

    def style_bank_inputs(self, train_dataset: Any, seed: int) -> dict[str, Any]:
        cfg = self.config
        mining = dataclasses.asdict(cfg.mining)
        mining["templates"] = hashlib.sha256("\n".join(cfg.mining.templates).encode()).hexdigest()[:16]
        return {"version": STYLE_BANK_VERSION, "resnet": dataclasses.asdict(cfg.resnet),
                "text": dataclasses.asdict(cfg.text) if cfg.text else None, "weights": self.weights_identity(),
                "dataset": dataset_fingerprint(train_dataset), "mining": mining,
                "class_names": list(cfg.class_names), "image_mean": list(cfg.image_mean),
                "image_std": list(cfg.image_std), "seed": int(seed)}

    def prepare(self, train_dataset: Any, cache_dir: Path | str | None, log: Callable[[str], None] = print, *,
                seed: int = 0, device: torch.device | str | None = None) -> dict[str, Any] | None:
        """Mine the style bank for ``train_dataset`` (or reuse ``<cache_dir>/famix_styles/<key>.pt``)."""
        if not self.config.style_mixing:
            return None
        t0 = time.perf_counter()
        inputs = self.style_bank_inputs(train_dataset, seed)
        key = style_bank_key(inputs)
        root = Path(cache_dir) if cache_dir is not None else default_hash_cache().parent
        path = root / "famix_styles" / f"{key}.pt"
        hit = path.is_file()
        if hit:
            bank = StyleBank.load(path)
            log(f"FAMix style bank: cache hit {path} ({len(bank)} styles)")
        else:
            device = torch.device(device) if device is not None else next(self.parameters()).device
            log(f"FAMix style mining on {device}: {len(train_dataset)} images, crops {self.config.mining.crop_size}, "
                f"batches of {self.config.mining.batch_size}, {self.config.mining.steps} steps each -> {path}")
            self.to(device)
            text_encoder = self.mining_text_encoder(device, log)
            bank = mine_styles(self.backbone, self.attnpool, text_encoder, train_dataset, self.config.mining,
                               normalize=self.normalize, class_names=self.config.class_names, seed=seed,
                               device=device, log=log, meta={"key": key})
            del text_encoder
            bank.save(path)
            path.with_suffix(".json").write_text(json.dumps(inputs, indent=1, sort_keys=True, default=str) + "\n")
        self.style_bank = bank
        names = {**{i: n for i, n in enumerate(self.config.class_names)}, IGNORE_INDEX: "255 (photo)"}
        return {"style_bank": str(path), "key": key, "cache_hit": hit, "num_styles": len(bank),
                "per_class": {names.get(k, str(k)): v for k, v in bank.counts().items()},
                "seconds": round(time.perf_counter() - t0, 2)}

    # ------------------------------------------------------------------ weights and checkpoints
    @classmethod
    def pretrained_files(cls, config: FAMixConfig) -> tuple[str, ...]:
        file = config.resnet.weights_file  # at scale="miniature": the stand-in (methods.miniature_weights)
        return (file,) if file else ()

    def pretrained_loaders(self) -> dict[str, Any]:
        return {file: self.load_official for file in self.pretrained_files(self.config)}

    def load_official(self, path: str | Path) -> KeyReport:
        """Image tower + attention pool from OpenAI's ``RN50.pt`` / ``RN101.pt`` (the text tower is read from
        the same file when the style mining needs it)."""
        report = load_clip_resnet(path, self.backbone, self.attnpool)
        self._weights_path = Path(path)
        return report

    def convert_checkpoint(self, state: dict[str, Any]) -> dict[str, Tensor]:
        """Released FAMix checkpoints are converted (:func:`convert_famix_checkpoint`); this module's own pass."""
        if not is_famix_reference_checkpoint(state):
            self._last_conversion = ([], [])
            return state
        out, notes, ignored = convert_famix_checkpoint(state)
        self._last_conversion = (notes, ignored)
        return out

    def load_checkpoint(self, state, *, strict: bool = False) -> KeyReport:
        report = super().load_checkpoint(state, strict=False)
        notes, ignored = self._last_conversion
        report.converted, report.ignored = list(notes), list(ignored)
        if strict and not report.ok():
            raise ValueError(f"checkpoint does not match {self.name}: {report.summary()}")
        return report

    @torch.no_grad()
    def example_input(self, batch: int = 1) -> Tensor:
        size = self.config.mining.crop_size
        return torch.zeros(batch, 3, size, size)
