"""Pretraining the miniature foundation models on the pretraining world (deterministic, CPU).

Every stand-in is the exact module the methods build at ``scale="miniature"`` (``ViTBackbone``,
``CLIPTextEncoder``, ``CLIPResNet``), trained on crops of the pretraining world (``datasets.miniature.world``)
and written under the official file's key names (``official_encoder_state_dict``; the CLIP ResNet and text
towers already use OpenAI's names). What each one learns from the world's exact signals:

- **DINOv2** (patch 14, as the official file; the methods resize it to 16 like Rein's converter): masked
  patch prediction. A quarter of the input patches are blanked in half of the batches; from every tapped
  block, linear probes predict, for each 2 px cell of every patch (``DINOV2_CELLS``), the element-class
  histogram (31 world elements, finer than the 19 benchmark classes) and the log depth. The probes are thrown
  away. A spread term (:func:`feature_spread_loss`, VICReg's variance + covariance) keeps every tap
  many-sided: class probes alone collapse a 64-wide ViT onto ~8-15 directions, poorer segmentation inputs
  than a random patch embedding. An invariance term (:func:`invariance_loss`, VICReg's third) pulls every tap
  of a crop towards the same tap of its repainted twin (:func:`repaint`: each element in other materials),
  the augmentation invariance that makes real foundation features carry across cameras: without it the taps
  kept the world's colours and a head trained on GTA5-style materials read them.
- **Depth-Anything-V2**: starts from the DINOv2 stand-in (as DA-V2 starts from DINOv2) and regresses log depth
  per patch from the taps, with the spread and invariance terms (depth alone collapsed the taps to rank ~15);
  its probes are kept as ``depth_head.*`` (ignored by the loaders, like DA-V2's DPT).
- **EVA02-CLIP** and **CLIP ResNet** with their text towers: symmetric InfoNCE between crops and their
  captions (templated class lists), and a dense alignment of patch features with the class-name prompts
  ("a photo of a car.") against the crop's class histogram, plus the same spread and invariance terms on the
  features a segmentation model reads (the ViT's taps, the ResNet's ``layer4``) and a prompt spread term
  (:func:`prompt_spread_loss`) that keeps the class prompts' embeddings apart. The CLIP ResNet's dense features are the
  attention pool's value and output projections applied per location (MaskCLIP's reading of CLIP).

The text towers use the real CLIP tokenizer, so their token table has the full vocabulary; rows of tokens the
world never writes stay zero (smaller compressed files, and no pretence of knowing those words).
Determinism: one seed per model, scenes rendered once from the world seed, crops drawn by a seeded numpy
generator, a fixed number of CPU threads (the CLI's ``--threads``); the same torch build reproduces the bytes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.labels import CITYSCAPES_CLASSES
from datasets.miniature.elements import E, ELEMENT_TRAIN_ID
from datasets.miniature.world import WorldScene, caption_for, render_world_scene
from methods.backbones.checkpoints import official_encoder_state_dict
from methods.backbones.resnet import CLIPResNet, clip_resnet_config
from methods.backbones.text import IMAGENET_TEMPLATES, CLIPTextEncoder, fill_template, text_config
from methods.backbones.vit import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, ViTBackbone, vit_config

NUM_ELEMENTS = len(E)
CLASS_PROMPTS = tuple(f"a photo of a {c}." for c in CITYSCAPES_CLASSES)
_FAR_LOG = math.log(200.0)
SPREAD_WEIGHT = 1.0
"""Weight of :func:`feature_spread_loss` on the features every stand-in hands to a segmentation model."""
INVARIANCE_WEIGHT = 1.0
"""Weight of :func:`invariance_loss` (VICReg's invariance term) between a crop and its repainted twin."""
REPAINT_STD = 40.0
"""RGB std of the per-element colour offsets of the repainted twin (:func:`repaint`); the benchmark's target
domains move each material by 36."""
PROMPT_MARGIN = 0.5
"""The class prompts' embeddings are pushed apart while their cosine exceeds this (:func:`prompt_spread_loss`)."""
DINOV2_CELLS = 7
"""The DINOv2 stand-in's probes read each 14 px patch as 7 x 7 cells of 2 px: a patch token must say what is
where inside its patch (the within-patch detail a segmentation head needs at 1/4 resolution), not only what
is in it."""


@dataclass(frozen=True)
class PretrainConfig:
    """How long and on what each stand-in trains (``scale`` multiplies every step count, for tests)."""

    world_seed: int = 0
    scenes: int = 400
    dinov2_steps: int = 300
    depth_steps: int = 100
    eva_clip_steps: int = 250
    clip_rn_steps: int = 200
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    scale: float = 1.0

    def steps(self, name: str) -> int:
        return max(1, int(round(getattr(self, f"{name}_steps") * self.scale)))


# ------------------------------------------------------------------------------------------------ world crops
class WorldCrops:
    """Random crops (rescaled, flipped) of pre-rendered world scenes with per-pixel elements, classes, depth."""

    def __init__(self, scenes: Sequence[WorldScene]):
        self.scenes = list(scenes)

    @classmethod
    def render(cls, seed: int, count: int, log: Callable[[str], None] = print) -> "WorldCrops":
        t0 = time.perf_counter()
        scenes = [render_world_scene(seed, i) for i in range(count)]
        log(f"rendered {count} world scenes in {time.perf_counter() - t0:.0f} s")
        return cls(scenes)

    def sample(self, rng: np.random.Generator, batch: int, size: int, scale: tuple[float, float] = (0.9, 1.8)
               ) -> tuple[Tensor, Tensor, Tensor, list[str]]:
        """(images float [B,3,S,S] 0..255, elements long [B,S,S], depth float [B,S,S], captions)."""
        images, elements, depths, captions = [], [], [], []
        for _ in range(batch):
            s = self.scenes[int(rng.integers(len(self.scenes)))]
            h, w = s.elements.shape
            f = max(float(rng.uniform(*scale)), (size + 1) / min(h, w))
            nw, nh = int(round(w * f)), int(round(h * f))
            img = cv2.resize(s.image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            lab = cv2.resize(s.elements, (nw, nh), interpolation=cv2.INTER_NEAREST)
            dep = cv2.resize(s.depth, (nw, nh), interpolation=cv2.INTER_NEAREST)
            y, x = int(rng.integers(nh - size + 1)), int(rng.integers(nw - size + 1))
            img, lab, dep = img[y:y + size, x:x + size], lab[y:y + size, x:x + size], dep[y:y + size, x:x + size]
            if rng.random() < 0.5:
                img, lab, dep = img[:, ::-1], lab[:, ::-1], dep[:, ::-1]
            template = IMAGENET_TEMPLATES[int(rng.integers(len(IMAGENET_TEMPLATES)))]
            names = caption_for(ELEMENT_TRAIN_ID[lab])[len("a photo of "):-1]
            captions.append(fill_template(template, names))
            images.append(np.ascontiguousarray(img))
            elements.append(np.ascontiguousarray(lab))
            depths.append(np.ascontiguousarray(dep))
        return (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float(),
                torch.from_numpy(np.stack(elements)).long(), torch.from_numpy(np.stack(depths)), captions)


def patch_histograms(labels: Tensor, num: int, patch: int, ignore: int | None = None) -> Tensor:
    """[B, num, H/p, W/p] share of each label in every p x p patch (``ignore`` pixels count for nothing)."""
    valid = labels != ignore if ignore is not None else torch.ones_like(labels, dtype=torch.bool)
    onehot = F.one_hot(labels.clamp(max=num - 1) * valid, num).permute(0, 3, 1, 2).float() * valid[:, None]
    return F.avg_pool2d(onehot, patch)


def patch_log_depth(depth: Tensor, patch: int) -> Tensor:
    """[B, 1, H/p, W/p] mean log depth per patch (clipped at 200 m, so the sky is 'far')."""
    return F.avg_pool2d(depth.clamp(0.5, 200.0).log()[:, None], patch)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy against a per-location distribution [B, C, h, w]; locations with no mass are skipped."""
    mass = target.sum(1)
    keep = mass > 0
    if not keep.any():
        return logits.sum() * 0
    target = target / mass.clamp_min(1e-6)[:, None]
    loss = -(target * F.log_softmax(logits, 1)).sum(1)
    return loss[keep].mean()


def feature_spread_loss(features: Tensor) -> Tensor:
    """VICReg's variance and covariance terms on patch features [B, C, h, w]: every channel keeps a spread of
    at least 1 over the patches, channels stay decorrelated. Without them the probes' few targets collapse the
    features onto a few directions (effective rank ~8-15 of 64), far poorer inputs for a segmentation head
    than the many-sided features of a real foundation model."""
    z = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    z = z - z.mean(0)
    std = (z.var(0) + 1e-4).sqrt()
    cov = (z.t() @ z) / max(1, len(z) - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return F.relu(1 - std).mean() + off.pow(2).sum() / z.shape[1]


def invariance_loss(features: Sequence[Tensor], twins: Sequence[Tensor]) -> Tensor:
    """VICReg's invariance term: mean squared distance between the patch features of a crop and of its repainted
    twin (:func:`repaint`), over the taps. With the spread term this is VICReg whole: without it the class probes
    let a tap keep the colours of the world's palettes, which a head trained on one domain latches onto."""
    return sum(F.mse_loss(f, t) for f, t in zip(features, twins)) / len(features)


def repaint(images: Tensor, elements: Tensor, rng: np.random.Generator, std: float = REPAINT_STD) -> Tensor:
    """The same crops in other materials: every element of every crop gets its own RGB offset (std ``std``), then
    each crop a random gain and contrast. The geometry (and so every label) is unchanged."""
    b = len(images)
    offsets = torch.from_numpy(rng.normal(0.0, std, (b, NUM_ELEMENTS, 3)).astype(np.float32))
    shift = torch.gather(offsets, 1, elements.reshape(b, -1, 1).expand(-1, -1, 3))  # [B, HW, 3]
    out = images + shift.transpose(1, 2).reshape(images.shape)
    gain = torch.from_numpy(rng.uniform(0.7, 1.3, (b, 1, 1, 1)).astype(np.float32))
    mean = out.mean((1, 2, 3), keepdim=True)
    contrast = torch.from_numpy(rng.uniform(0.7, 1.3, (b, 1, 1, 1)).astype(np.float32))
    return ((out - mean) * contrast + mean * gain).clamp(0, 255)


def prompt_spread_loss(embeddings: Tensor, margin: float = PROMPT_MARGIN) -> Tensor:
    """Squared hinge on the cosine of every pair of different class prompts above ``margin``. Contrastive and
    dense alignment alone leave the 19 prompts of a tiny text tower on nearly one direction (cosine 0.98 on
    average, "fence" vs "person" 0.9999), useless to the methods that classify through them (Vireo, tqdm)."""
    unit = F.normalize(embeddings, dim=-1)
    cosine = unit @ unit.t()
    different = ~torch.eye(len(unit), dtype=torch.bool)
    return F.relu(cosine[different] - margin).pow(2).mean()


def blank_patches(images: Tensor, rng: np.random.Generator, patch: int, ratio: float, fill: Sequence[float]) -> Tensor:
    """Masked-modelling input: ``ratio`` of the patches replaced by the mean colour ``fill``."""
    b, _, h, w = images.shape
    mask = torch.from_numpy(rng.random((b, 1, h // patch, w // patch)) < ratio).float()
    mask = F.interpolate(mask, scale_factor=patch, mode="nearest")
    return images * (1 - mask) + torch.tensor(fill).view(1, 3, 1, 1) * mask


def _optimizer(params, cfg: PretrainConfig, steps: int) -> tuple[torch.optim.Optimizer, Callable[[int], None]]:
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)

    def set_lr(step: int) -> None:
        f = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = cfg.lr * f
    return opt, set_lr


def _update(opt: torch.optim.Optimizer, set_lr: Callable[[int], None], step: int, loss: Tensor) -> None:
    set_lr(step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _normalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    return (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ------------------------------------------------------------------------------------------------ DINOv2 / DA-V2
def dinov2_standin_config():
    """The DINOv2 stand-in at its file's geometry: ``dinov2_tiny`` at patch 14 on a 4x4 position grid."""
    return vit_config("dinov2_tiny", patch_size=14, img_size=56, source_patch_size=None, frozen=False)


class _TapProbes(nn.Module):
    """One linear probe per tap: ``out`` channels for each of the ``cells`` x ``cells`` sub-cells of every patch
    (pixel-shuffled to a grid ``cells`` times finer; thrown away, or kept as a depth head)."""

    def __init__(self, taps: int, dim: int, out: int, cells: int = 1):
        super().__init__()
        self.cells = cells
        self.projects = nn.ModuleList(nn.Conv2d(dim, out * cells * cells, 1) for _ in range(taps))

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        return [F.pixel_shuffle(p(f), self.cells) for p, f in zip(self.projects, features)]


def train_dinov2(crops: WorldCrops, cfg: PretrainConfig, *, seed: int = 1, log=print) -> ViTBackbone:
    torch.manual_seed(seed)
    rng = np.random.default_rng([cfg.world_seed, seed])
    vit_cfg = dinov2_standin_config()
    backbone = ViTBackbone(vit_cfg)
    probes = _TapProbes(len(vit_cfg.taps), vit_cfg.embed_dim, NUM_ELEMENTS + 1, cells=DINOV2_CELLS)
    steps = cfg.steps("dinov2")
    opt, set_lr = _optimizer([*backbone.parameters(), *probes.parameters()], cfg, steps)
    p, size = vit_cfg.patch_size, 8 * vit_cfg.patch_size
    cell = p // DINOV2_CELLS
    t0 = time.perf_counter()
    for step in range(steps):
        images, elements, depth, _ = crops.sample(rng, cfg.batch_size, size)
        twins = repaint(images, elements, rng)
        if step % 2 == 1:
            images = blank_patches(images, rng, p, 0.25, IMAGENET_MEAN)
        hist = patch_histograms(elements, NUM_ELEMENTS, cell)
        logd = patch_log_depth(depth, cell)
        out = backbone(_normalise(torch.cat([images, twins]), IMAGENET_MEAN, IMAGENET_STD))
        b = len(images)
        features = [f[:b] for f in out.features]
        twin_features = [f[b:] for f in out.features]
        loss_cls = loss_depth = 0
        for pred in probes(features):
            loss_cls = loss_cls + soft_cross_entropy(pred[:, :NUM_ELEMENTS], hist)
            loss_depth = loss_depth + F.smooth_l1_loss(pred[:, NUM_ELEMENTS:], logd)
        # the spread over both views as one batch, at half the weight the single view had
        loss_spread = sum(feature_spread_loss(f) for f in out.features) / 2
        loss_invariance = invariance_loss(features, twin_features)
        loss = ((loss_cls + loss_depth + SPREAD_WEIGHT * loss_spread) / len(out.features)
                + INVARIANCE_WEIGHT * loss_invariance)
        _update(opt, set_lr, step, loss)
        if step % 100 == 0 or step == steps - 1:
            log(f"dinov2 {step + 1}/{steps}: element CE {float(loss_cls.detach()) / 4:.3f}, depth {float(loss_depth.detach()) / 4:.3f}, "
                f"spread {float(loss_spread.detach()) / 4:.3f}, invariance {float(loss_invariance.detach()):.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    return backbone.eval()


def train_depth_anything(crops: WorldCrops, dinov2: ViTBackbone, cfg: PretrainConfig, *, seed: int = 2,
                         log=print) -> tuple[ViTBackbone, nn.Module]:
    torch.manual_seed(seed)
    rng = np.random.default_rng([cfg.world_seed, seed])
    vit_cfg = dataclasses.replace(dinov2_standin_config(), init_values=1.0)
    backbone = ViTBackbone(vit_cfg)
    backbone.load_state_dict(dinov2.state_dict())
    head = _TapProbes(len(vit_cfg.taps), vit_cfg.embed_dim, 1)
    steps = cfg.steps("depth")
    opt, set_lr = _optimizer([*backbone.parameters(), *head.parameters()], cfg, steps)
    p, size = vit_cfg.patch_size, 8 * vit_cfg.patch_size
    t0 = time.perf_counter()
    for step in range(steps):
        images, elements, depth, _ = crops.sample(rng, cfg.batch_size, size)
        twins = repaint(images, elements, rng)
        logd = patch_log_depth(depth, p)
        out = backbone(_normalise(torch.cat([images, twins]), IMAGENET_MEAN, IMAGENET_STD))
        b = len(images)
        pred = torch.stack(head([f[:b] for f in out.features])).sum(0)
        loss_spread = sum(feature_spread_loss(f) for f in out.features) / len(out.features)
        loss_invariance = invariance_loss([f[:b] for f in out.features], [f[b:] for f in out.features])
        loss_depth = F.smooth_l1_loss(pred, logd)
        _update(opt, set_lr, step, loss_depth + SPREAD_WEIGHT * loss_spread + INVARIANCE_WEIGHT * loss_invariance)
        if step % 100 == 0 or step == steps - 1:
            log(f"depth {step + 1}/{steps}: log-depth L1 {float(loss_depth.detach()):.3f}, spread "
                f"{float(loss_spread.detach()):.3f}, invariance {float(loss_invariance.detach()):.3f} "
                f"({time.perf_counter() - t0:.0f} s)")
    return backbone.eval(), head


# ------------------------------------------------------------------------------------------------ CLIP pairs
def _text_tower(seed: int) -> CLIPTextEncoder:
    """The ``tiny`` text tower (77 positions, the real tokenizer), trainable."""
    torch.manual_seed(seed)
    return CLIPTextEncoder(text_config("tiny"), frozen=False)


def _contrastive(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE; identical captions in a batch count as positives of each other."""
    i, t = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * i @ t.t()
    return 0.5 * (F.cross_entropy(logits, torch.arange(len(i))) + F.cross_entropy(logits.t(), torch.arange(len(i))))


def _dense_alignment(features: Tensor, class_emb: Tensor, classes: Tensor, patch: int, logit_scale: Tensor) -> Tensor:
    """Per-patch CE of (features . class-name embeddings) against the patch's class histogram."""
    f = F.normalize(features, dim=1)
    logits = logit_scale.exp().clamp(max=100) * torch.einsum("bchw,kc->bkhw", f, F.normalize(class_emb, dim=-1))
    hist = patch_histograms(classes, len(CITYSCAPES_CLASSES), patch, ignore=255)
    hist = F.adaptive_avg_pool2d(hist, logits.shape[-2:]) if hist.shape[-2:] != logits.shape[-2:] else hist
    return soft_cross_entropy(logits, hist)


def _clip_loop(name: str, crops: WorldCrops, cfg: PretrainConfig, size: int, parameters, text: CLIPTextEncoder,
               encode: Callable[[Tensor], tuple[Tensor, Tensor, list[Tensor]]], patch: int, rng: np.random.Generator,
               log, logit_scale: nn.Parameter) -> None:
    """Shared loop: ``encode(images)`` -> (global embeddings [B, E], dense features [B, E, h, w], the features a
    segmentation model reads, which get the spread term and the invariance term to their repainted twins)."""
    steps = cfg.steps(name)
    opt, set_lr = _optimizer([*parameters, *text.parameters(), logit_scale], cfg, steps)
    prompts = text.tokenize(CLASS_PROMPTS)
    t0 = time.perf_counter()
    for step in range(steps):
        images, elements, _, captions = crops.sample(rng, cfg.batch_size, size)
        twins = repaint(images, elements, rng)
        classes = torch.from_numpy(ELEMENT_TRAIN_ID[elements.numpy()]).long()
        global_emb, dense, features = encode(torch.cat([images, twins]))
        b = len(images)
        loss_spread = sum(feature_spread_loss(f) for f in features) / len(features)
        loss_invariance = invariance_loss([f[:b] for f in features], [f[b:] for f in features])
        caption_emb = text.encode_tokens(text.tokenize(captions), normalize=False)
        class_emb = text.encode_tokens(prompts, normalize=False)
        loss_global = _contrastive(global_emb[:b], caption_emb, logit_scale)
        loss_dense = _dense_alignment(dense[:b], class_emb, classes, patch, logit_scale)
        loss_prompts = prompt_spread_loss(class_emb)
        loss = (loss_global + loss_dense + SPREAD_WEIGHT * (loss_spread + loss_prompts)
                + INVARIANCE_WEIGHT * loss_invariance)
        _update(opt, set_lr, step, loss)
        if step % 100 == 0 or step == steps - 1:
            log(f"{name} {step + 1}/{steps}: contrastive {float(loss_global.detach()):.3f}, dense {float(loss_dense.detach()):.3f}, "
                f"spread {float(loss_spread.detach()):.3f}, invariance {float(loss_invariance.detach()):.3f}, "
                f"prompts {float(loss_prompts.detach()):.3f} ({time.perf_counter() - t0:.0f} s)")


def train_eva_clip(crops: WorldCrops, cfg: PretrainConfig, *, seed: int = 3, log=print
                   ) -> tuple[ViTBackbone, CLIPTextEncoder, Tensor]:
    torch.manual_seed(seed)
    rng = np.random.default_rng([cfg.world_seed, seed])
    vit_cfg = vit_config("eva02_tiny", frozen=False)
    visual = ViTBackbone(vit_cfg)
    text = _text_tower(seed + 100)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode(images: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        out = visual(_normalise(images, CLIP_MEAN, CLIP_STD), project=True)
        h, w = out.grid
        tokens = out.projected[:, 1:]
        return out.projected[:, 0], tokens.transpose(1, 2).reshape(len(tokens), -1, h, w), list(out.features)

    _clip_loop("eva_clip", crops, cfg, 8 * vit_cfg.patch_size, visual.parameters(), text, encode,
               vit_cfg.patch_size, rng, log, logit_scale)
    return visual.eval(), text.eval(), logit_scale.detach()


def clip_resnet_standin() -> CLIPResNet:
    return CLIPResNet(clip_resnet_config("tiny", output_stride=16))


def train_clip_resnet(crops: WorldCrops, cfg: PretrainConfig, *, seed: int = 4, log=print
                      ) -> tuple[CLIPResNet, CLIPTextEncoder, Tensor]:
    torch.manual_seed(seed)
    rng = np.random.default_rng([cfg.world_seed, seed])
    tower = clip_resnet_standin()
    text = _text_tower(seed + 100)
    logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    pool = tower.attnpool
    side = tower.cfg.image_size

    def encode(images: Tensor) -> tuple[Tensor, Tensor, list[Tensor]]:
        x = _normalise(images, CLIP_MEAN, CLIP_STD)
        small = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        global_emb = tower.encode_image(small)
        feats = tower(x)["layer4"]  # segmentation geometry, stride 16
        dense = F.conv2d(F.conv2d(feats, pool.v_proj.weight[:, :, None, None], pool.v_proj.bias),
                         pool.c_proj.weight[:, :, None, None], pool.c_proj.bias)
        return global_emb, dense, [feats]

    _clip_loop("clip_rn", crops, cfg, 128, tower.parameters(), text, encode, 16, rng, log, logit_scale)
    return tower.eval(), text.eval(), logit_scale.detach()


# ------------------------------------------------------------------------------------------------ official files
def zero_unused_token_rows(text: CLIPTextEncoder, texts: Sequence[str]) -> int:
    """Zero the token-table rows of tokens that none of ``texts`` contains; returns the rows kept."""
    used = torch.unique(text.tokenize(list(texts)))
    keep = torch.zeros(text.cfg.vocab_size, dtype=torch.bool)
    keep[used] = True
    with torch.no_grad():
        text.text.token_embedding.weight[~keep] = 0
    return int(keep.sum())


def world_vocabulary() -> list[str]:
    """Every text the world's captions and prompts can contain (templates x classes)."""
    return [fill_template(t, c) for t in IMAGENET_TEMPLATES for c in CITYSCAPES_CLASSES] + list(CLASS_PROMPTS)


def _half(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def dinov2_file_state(backbone: ViTBackbone) -> dict[str, Tensor]:
    return official_encoder_state_dict(backbone, "dinov2")


def depth_anything_file_state(backbone: ViTBackbone, head: nn.Module) -> dict[str, Tensor]:
    out = official_encoder_state_dict(backbone, "depth_anything_v2")
    out.update({f"depth_head.{k}": v.detach().clone() for k, v in head.state_dict().items()})
    return out


def eva_clip_file_state(visual: ViTBackbone, text: CLIPTextEncoder, logit_scale: Tensor) -> dict[str, Tensor]:
    """EVA-CLIP layout in fp16: ``visual.*`` + ``text.*`` + ``logit_scale``."""
    out = official_encoder_state_dict(visual, "eva_clip")
    out.update({k: v.detach().clone() for k, v in text.state_dict().items() if not k.endswith("attn_mask")})
    out["logit_scale"] = logit_scale.clone()
    return _half(out)


def clip_resnet_file_state(tower: CLIPResNet, text: CLIPTextEncoder, logit_scale: Tensor) -> dict[str, Tensor]:
    """OpenAI CLIP layout in fp16: ``visual.*`` (tower + attention pool) + top-level text keys."""
    out = {f"visual.{k}": v.detach().clone() for k, v in tower.state_dict().items()}
    out.update({k[len("text."):]: v.detach().clone() for k, v in text.state_dict().items()
                if not k.endswith("attn_mask")})
    out["logit_scale"] = logit_scale.clone()
    return _half(out)


def save_state(state: dict[str, Tensor], path: Path) -> None:
    """``torch.save`` with sorted keys and contiguous tensors (the bytes depend only on the values)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: state[k].contiguous() for k in sorted(state)}, str(path))


def pretrain_all(out_dir: Path, cfg: PretrainConfig = PretrainConfig(), *, only: Sequence[str] | None = None,
                 log=print) -> dict[str, float]:
    """Train the stand-ins and write them under their file names into ``out_dir``; returns seconds per file."""
    names = list(only) if only else ["dinov2_tiny_pretrain.pth", "depth_anything_v2_tiny.pth",
                                      "EVA02_CLIP_tiny.pt", "CLIP_RN_tiny.pt"]
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    crops = WorldCrops.render(cfg.world_seed, cfg.scenes, log)
    seconds["world"] = time.perf_counter() - t0
    vocabulary = world_vocabulary()
    dinov2 = None
    for name in names:
        t0 = time.perf_counter()
        if name in ("dinov2_tiny_pretrain.pth", "depth_anything_v2_tiny.pth") and dinov2 is None:
            dinov2 = train_dinov2(crops, cfg, log=log)
            if "dinov2_tiny_pretrain.pth" in names:
                save_state(dinov2_file_state(dinov2), out_dir / "dinov2_tiny_pretrain.pth")
        if name == "depth_anything_v2_tiny.pth":
            backbone, head = train_depth_anything(crops, dinov2, cfg, log=log)
            save_state(depth_anything_file_state(backbone, head), out_dir / name)
        elif name == "EVA02_CLIP_tiny.pt":
            visual, text, scale = train_eva_clip(crops, cfg, log=log)
            zero_unused_token_rows(text, vocabulary)
            save_state(eva_clip_file_state(visual, text, scale), out_dir / name)
        elif name == "CLIP_RN_tiny.pt":
            tower, text, scale = train_clip_resnet(crops, cfg, log=log)
            zero_unused_token_rows(text, vocabulary)
            save_state(clip_resnet_file_state(tower, text, scale), out_dir / name)
        elif name != "dinov2_tiny_pretrain.pth":
            raise KeyError(f"unknown miniature weights file {name!r}")
        seconds[name] = time.perf_counter() - t0
        log(f"wrote {out_dir / name} ({seconds[name]:.0f} s)")
    return seconds
