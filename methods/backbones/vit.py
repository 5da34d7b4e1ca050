"""Shared plain-ViT backbone wrapper (DINOv2, Depth-Anything-V2 encoder, EVA02-CLIP, OpenAI CLIP).

One module, :class:`ViTBackbone`, wraps a timm model built directly from a :class:`ViTConfig`
(``timm.models.vision_transformer.VisionTransformer`` for the ``dinov2`` and ``clip`` families,
``timm.models.eva.Eva`` for ``eva02``). It returns the patch-token maps after the tapped blocks
("out_indices" in the mmseg configs), the class token at each tap and the final normed tokens, and it
lets a method rewrite the tokens after every block (Rein / SET / Vireo insert their token refinement
through the ``after_block`` hook).

The two multi-scale necks that turn the four stride-``p`` taps into strides 4/8/16/32 live here too:
:class:`MultiScaleResample` (Rein: parameter-free bilinear resampling) and :class:`SimpleFPN`
(tqdm: deconvolutions / max-pool, trainable).

Loading of the official weight files (``load_official``) is in :mod:`methods.backbones.checkpoints`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoints import KeyReport

FAMILIES = ("dinov2", "eva02", "clip")
PATCH_RESAMPLE_MODES = ("bicubic", "pinv")
POS_INTERP_MODES = ("bicubic", "bilinear")

# Normalisation constants on the 0..255 scale (the harness feeds 0..255 images; each method normalises).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CLIP_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_STD = (68.5005327, 66.6321579, 70.32316305)

AfterBlock = Callable[[int, Tensor, "tuple[int, int]"], Tensor]


@dataclass(frozen=True)
class ViTConfig:
    """Architecture + weights of one plain ViT image encoder.

    ``patch_size`` is the patch size *of the model* (after conversion: Rein runs DINOv2 at 16 although the
    official file is 14, ``source_patch_size``). ``img_size`` fixes the stored position-embedding grid
    (``img_size // patch_size``); other input sizes interpolate it on the fly.
    ``taps`` are 0-based block indices whose outputs are returned ("out_indices").
    """

    family: str
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_size: int
    img_size: int
    taps: tuple[int, ...]
    drop_path: float = 0.0
    frozen: bool = True
    weights_file: str | None = None
    source_patch_size: int | None = None
    # --- family details -------------------------------------------------------------------------
    init_values: float | None = None  # LayerScale init (DINOv2: 1e-5); None = no LayerScale
    qkv_bias: bool = True
    norm_eps: float = 1e-6  # DINOv2 / EVA 1e-6, OpenAI CLIP 1e-5
    act: str = "gelu"  # "quick_gelu" for OpenAI CLIP weights
    pre_norm: bool = False  # CLIP "ln_pre" after the embeddings
    proj_dim: int | None = None  # CLIP / EVA-CLIP image->joint-space projection ("proj" / "head"), None = drop
    proj_bias: bool = False  # EVA-CLIP's head has a bias, OpenAI's proj does not
    swiglu: bool = False  # EVA02: SwiGLU MLP (w1 gate, w2 value, w3 out)
    subln: bool = False  # EVA02: sub-LN inside attention (inner_attn_ln) and MLP (ffn_ln)
    rope: bool = False  # EVA02: 2-D rotary embedding on patch tokens (class token untouched)
    rope_ref_grid: int | None = None  # EVA02: pretraining token grid the rope frequencies refer to (224/14=16)
    # --- conversion / runtime -----------------------------------------------------------------------
    patch_resample: str = "bicubic"  # kernel conversion: "bicubic" (Rein's F.interpolate) or "pinv" (FlexiViT)
    pos_interp: str = "bicubic"  # pos-embed resize at load and at run time (tqdm CLIP-B: bilinear)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # 0..255 scale
    std: tuple[float, float, float] = IMAGENET_STD
    grad_checkpointing: bool = False  # activation checkpointing per block whenever gradients flow through it

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"ViTConfig.family={self.family!r}: expected one of {FAMILIES}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ViTConfig: embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}")
        taps = tuple(int(t) for t in self.taps)
        if not taps or list(taps) != sorted(set(taps)) or taps[0] < 0 or taps[-1] >= self.depth:
            raise ValueError(
                f"ViTConfig.taps={self.taps}: expected strictly increasing block indices in [0, {self.depth - 1}]"
            )
        object.__setattr__(self, "taps", taps)
        if self.patch_resample not in PATCH_RESAMPLE_MODES:
            raise ValueError(f"ViTConfig.patch_resample={self.patch_resample!r}: expected {PATCH_RESAMPLE_MODES}")
        if self.pos_interp not in POS_INTERP_MODES:
            raise ValueError(f"ViTConfig.pos_interp={self.pos_interp!r}: expected {POS_INTERP_MODES}")
        if self.act not in ("gelu", "quick_gelu"):
            raise ValueError(f"ViTConfig.act={self.act!r}: expected 'gelu' or 'quick_gelu'")
        if self.family == "eva02" and self.rope and self.rope_ref_grid is None:
            object.__setattr__(self, "rope_ref_grid", self.img_size // self.patch_size)
        if self.img_size < self.patch_size:
            raise ValueError(f"ViTConfig: img_size {self.img_size} smaller than patch_size {self.patch_size}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid of the stored position embedding (img_size // patch_size, floored)."""
        g = self.img_size // self.patch_size
        return (g, g)


_L = dict(embed_dim=1024, depth=24, num_heads=16)
_EVA_L = dict(
    family="eva02",
    **_L,
    mlp_ratio=4 * 2 / 3,
    patch_size=14,
    img_size=512,
    swiglu=True,
    subln=True,
    rope=True,
    rope_ref_grid=16,  # EVA-CLIP pt_hw_seq_len = 224 / 14, intp_freq=True
    norm_eps=1e-6,
    mean=CLIP_MEAN,
    std=CLIP_STD,
)

VIT_CONFIGS: dict[str, ViTConfig] = {
    # Rein / SET / Vireo: DINOv2-L/14 converted to patch 16 (Rein's convert_dinov2_large_512x512.py):
    # 512 crop -> 32x32 tokens. Frozen.
    "dinov2_vitl14": ViTConfig(
        family="dinov2", **_L, mlp_ratio=4.0, patch_size=16, img_size=512, taps=(7, 11, 15, 23),
        init_values=1e-5, weights_file="dinov2_vitl14_pretrain.pth", source_patch_size=14,
    ),
    # DINOv2-L at its native patch 14 and native 518 px grid (37x37, pos-embed loaded unchanged);
    # a 512 input gives 36x36 tokens (the conv drops the last 8 px; pos-embed interpolated at run time).
    "dinov2_vitl14_p14": ViTConfig(
        family="dinov2", **_L, mlp_ratio=4.0, patch_size=14, img_size=518, taps=(7, 11, 15, 23),
        init_values=1e-5, weights_file="dinov2_vitl14_pretrain.pth",
    ),
    # Vireo: Depth-Anything-V2 ViT-L encoder (DINOv2-L architecture), converted to patch 16 like DINOv2.
    # Vireo reads the patch tokens after *every* block, hence all 24 taps. DA-V2 builds its encoder with
    # LayerScale init 1.0 (irrelevant once weights are loaded).
    "depth_anything_v2_vitl": ViTConfig(
        family="dinov2", **_L, mlp_ratio=4.0, patch_size=16, img_size=512, taps=tuple(range(24)),
        init_values=1.0, weights_file="depth_anything_v2_vitl.pth", source_patch_size=14,
    ),
    # tqdm: EVA02-CLIP-L/14-336 visual tower at 512 px, patch 14 -> 36x36 tokens, fine-tuned (0.1x LR),
    # head projection 1024 -> 768 kept (tqdm's ContextDecoder / text matching read projected tokens).
    "eva02_clip_vitl14": ViTConfig(
        **_EVA_L, taps=(7, 11, 15, 23), drop_path=0.0, frozen=False,
        weights_file="EVA02_CLIP_L_336_psz14_s6B.pt", proj_dim=768, proj_bias=True,
    ),
    # VLTSeg (re-implementation): EVA02-CLIP-L/14 (224 px, s4B), fully fine-tuned, no text side.
    "eva02_clip_vitl14_s4b": ViTConfig(
        **_EVA_L, taps=(9, 14, 19, 23), drop_path=0.2, frozen=False,
        weights_file="EVA02_CLIP_L_psz14_s4B.pt",
    ),
    # tqdm: OpenAI CLIP ViT-B/16 at 512 px (32x32 tokens), drop-path 0.1, fine-tuned, proj 768 -> 512.
    # DenseCLIP/tqdm resize its pos-embed bilinearly.
    "clip_vitb16": ViTConfig(
        family="clip", embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, patch_size=16, img_size=512,
        taps=(3, 5, 7, 11), drop_path=0.1, frozen=False, weights_file="ViT-B-16.pt",
        pre_norm=True, norm_eps=1e-5, act="quick_gelu", proj_dim=512, proj_bias=False, pos_interp="bilinear",
        mean=CLIP_MEAN, std=CLIP_STD,
    ),
    # ---- tiny CPU configs for tests (same code paths, few blocks, narrow) ----
    "dinov2_tiny": ViTConfig(
        family="dinov2", embed_dim=64, depth=4, num_heads=2, mlp_ratio=4.0, patch_size=16, img_size=64,
        taps=(0, 1, 2, 3), init_values=1e-5, weights_file="dinov2_tiny_pretrain.pth", source_patch_size=14,
    ),
    "eva02_tiny": ViTConfig(
        family="eva02", embed_dim=64, depth=4, num_heads=2, mlp_ratio=4 * 2 / 3, patch_size=16, img_size=64,
        taps=(0, 1, 2, 3), swiglu=True, subln=True, rope=True, rope_ref_grid=4, proj_dim=32, proj_bias=True,
        frozen=False, weights_file="EVA02_CLIP_tiny.pt", mean=CLIP_MEAN, std=CLIP_STD,
    ),
    "clip_tiny": ViTConfig(
        family="clip", embed_dim=64, depth=4, num_heads=2, mlp_ratio=4.0, patch_size=16, img_size=64,
        taps=(0, 1, 2, 3), pre_norm=True, norm_eps=1e-5, act="quick_gelu", proj_dim=32, frozen=False,
        weights_file="ViT-tiny.pt", mean=CLIP_MEAN, std=CLIP_STD,
    ),
}


def vit_config(name: str, **overrides) -> ViTConfig:
    """A named config from :data:`VIT_CONFIGS`, with fields replaced by ``overrides``."""
    if name not in VIT_CONFIGS:
        raise KeyError(f"unknown ViT config {name!r}; known: {sorted(VIT_CONFIGS)}")
    cfg = VIT_CONFIGS[name]
    if not overrides:
        return cfg
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ViTConfig)}
    if unknown:
        raise TypeError(f"vit_config({name!r}): unknown fields {sorted(unknown)}")
    return dataclasses.replace(cfg, **overrides)


@dataclass
class ViTOutput:
    """What :meth:`ViTBackbone.forward` returns."""

    features: list[Tensor]  # one [B, D, h, w] patch-token map per tap (after the tapped block + hook)
    cls_tokens: list[Tensor]  # [B, D] class token at each tap
    final_tokens: Tensor  # [B, 1+N, D] after the final norm (class token first)
    grid: tuple[int, int] = (0, 0)  # (h, w) token grid of this input
    projected: Tensor | None = field(default=None)  # [B, 1+N, proj_dim] when forward(project=True)


def _build_timm(cfg: ViTConfig) -> nn.Module:
    from timm.layers import LayerNorm

    norm_layer = partial(LayerNorm, eps=cfg.norm_eps)
    common = dict(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        num_classes=0,
        global_pool="token",
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        init_values=cfg.init_values,
        drop_path_rate=cfg.drop_path,
        dynamic_img_size=True,  # NHWC patch tokens, no fixed input size; pos-embed handled here
        norm_layer=norm_layer,
    )
    if cfg.family in ("dinov2", "clip"):
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            **common,
            class_token=True,
            pre_norm=cfg.pre_norm,  # also drops the patch-embed bias (CLIP conv1 has none)
            final_norm=True,
            act_layer="quick_gelu" if cfg.act == "quick_gelu" else None,
        )
    from timm.models.eva import Eva

    return Eva(
        **common,
        qkv_fused=False,  # separate q/k/v like EVA-CLIP (q_proj, k_proj, v_proj + q_bias, v_bias)
        swiglu_mlp=cfg.swiglu,
        scale_mlp=cfg.subln,
        scale_attn_inner=cfg.subln,
        use_rot_pos_emb=cfg.rope,
        ref_feat_shape=(cfg.rope_ref_grid, cfg.rope_ref_grid) if cfg.rope else None,
        use_pre_transformer_norm=cfg.pre_norm,
        class_token=True,
    )


class ViTBackbone(nn.Module):
    """A plain ViT returning tapped patch-token maps, with a per-block token hook.

    ``forward(x)`` takes *normalised* images ``[B, 3, H, W]``. H and W should be multiples of the patch
    size; otherwise the trailing rows/columns are dropped, exactly as the stride-p patch convolution does
    (EVA02 at 512/14 -> 36x36 tokens, as in tqdm). When the token grid differs from the stored one
    (``cfg.img_size // patch``) the absolute pos-embed is interpolated on the fly (``cfg.pos_interp``), and
    EVA02's rotary embedding is rebuilt for the grid (frequencies scaled to ``rope_ref_grid``, as EVA-CLIP's
    ``intp_freq`` does).
    """

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.vit = _build_timm(cfg)
        self.proj = nn.Linear(cfg.embed_dim, cfg.proj_dim, bias=cfg.proj_bias) if cfg.proj_dim else None
        self._tap_set = frozenset(cfg.taps)
        self._frozen = False
        if cfg.frozen:
            self.freeze()

    # ----------------------------------------------------------------------------------- properties
    @property
    def num_prefix_tokens(self) -> int:
        return int(self.vit.num_prefix_tokens)

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def patch_size(self) -> int:
        return self.cfg.patch_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.cfg.grid_size

    @property
    def taps(self) -> tuple[int, ...]:
        return self.cfg.taps

    @property
    def frozen(self) -> bool:
        return self._frozen

    @property
    def trainable(self) -> bool:
        return not self._frozen

    # ------------------------------------------------------------------------------ freeze / train
    def freeze(self) -> "ViTBackbone":
        """requires_grad False everywhere and eval mode, kept through later ``.train()`` calls.

        Gradients still flow *through* a frozen backbone to the activations (Rein trains its tokens that way).
        """
        self._frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def unfreeze(self) -> "ViTBackbone":
        self._frozen = False
        for p in self.parameters():
            p.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> "ViTBackbone":
        return super().train(bool(mode) and not self._frozen)

    # ------------------------------------------------------------------------------------ helpers
    def normalize(self, images: Tensor) -> Tensor:
        """0..255 RGB images -> the normalisation this backbone's weights expect (cfg.mean / cfg.std)."""
        mean = torch.tensor(self.cfg.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def project(self, tokens: Tensor) -> Tensor:
        """CLIP / EVA-CLIP projection of (final, normed) tokens into the joint image-text space."""
        if self.proj is None:
            raise RuntimeError(
                f"ViTBackbone({self.cfg.family}): this config has no projection (proj_dim=None); "
                "use a config with proj_dim set (e.g. 'eva02_clip_vitl14', 'clip_vitb16')"
            )
        return self.proj(tokens)

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The absolute position embedding [1, 1+h*w, D] for a token grid (interpolated when needed)."""
        pe = self.vit.pos_embed
        if tuple(grid) == self.grid_size:
            return pe
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(
            pe,
            new_size=list(grid),
            old_size=list(self.grid_size),
            num_prefix_tokens=self.num_prefix_tokens,
            interpolation=self.cfg.pos_interp,
            antialias=False,
        )

    # ------------------------------------------------------------------------------------ forward
    def embed(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding + class token + position embedding (+ CLIP ln_pre): tokens [B, 1+N, D], (h, w)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ViTBackbone expects images [B, 3, H, W], got {tuple(x.shape)}")
        p = self.patch_size
        H, W = x.shape[-2:]
        if H < p or W < p:
            raise ValueError(f"ViTBackbone: input {H}x{W} is smaller than one {p}x{p} patch")
        if H % p or W % p:  # identical to what the stride-p convolution ignores
            x = x[..., : (H // p) * p, : (W // p) * p]
        t = self.vit.patch_embed(x)  # [B, h, w, D]
        B, h, w, D = t.shape
        t = t.reshape(B, h * w, D)
        cls = self.vit.cls_token.expand(B, -1, -1)
        t = torch.cat([cls, t], dim=1) + self.pos_embed_for((h, w))
        t = self.vit.pos_drop(t)
        t = self.vit.norm_pre(t)
        return t, (h, w)

    def forward(
        self, x: Tensor, *, after_block: AfterBlock | None = None, project: bool = False
    ) -> ViTOutput:
        """Run the encoder.

        ``after_block(i, tokens [B,1+N,D], (h, w))`` is called after every block ``i`` (0-based) and returns
        the tokens to continue with; taps are read *after* the hook (as Rein does).
        """
        t, (h, w) = self.embed(x)
        B, _, D = t.shape
        npt = self.num_prefix_tokens
        rope = None
        if self.cfg.family == "eva02" and self.vit.rope is not None:
            rope = self.vit.rope.get_embed(shape=[h, w])
        # Activation checkpointing whenever a backward will run through the blocks: a fine-tuned backbone, or a
        # frozen one (eval mode) whose tokens carry gradients from a trainable between-block hook (Rein).
        use_ckpt = self.cfg.grad_checkpointing and torch.is_grad_enabled()
        features: list[Tensor] = []
        cls_tokens: list[Tensor] = []
        for i, blk in enumerate(self.vit.blocks):
            ckpt = use_ckpt and (t.requires_grad or not self._frozen)
            if rope is not None:
                if ckpt:
                    t = torch.utils.checkpoint.checkpoint(blk, t, rope, use_reentrant=False)
                else:
                    t = blk(t, rope=rope)
            else:
                t = torch.utils.checkpoint.checkpoint(blk, t, use_reentrant=False) if ckpt else blk(t)
            if after_block is not None:
                t = after_block(i, t, (h, w))
            if i in self._tap_set:
                features.append(t[:, npt:].transpose(1, 2).reshape(B, D, h, w))
                cls_tokens.append(t[:, 0])
        final = self.vit.norm(t)
        projected = self.project(final) if project else None
        return ViTOutput(features=features, cls_tokens=cls_tokens, final_tokens=final, grid=(h, w),
                         projected=projected)

    # ------------------------------------------------------------------------------- weights
    def load_official(self, path: str | Path, *, strict: bool = False) -> "KeyReport":
        """Load an official weight file (DINOv2, Depth-Anything-V2, EVA-CLIP, OpenAI CLIP, or this module's
        own state dict), converting patch size / pos-embed grid as needed. See
        :func:`methods.backbones.checkpoints.load_official`."""
        from .checkpoints import load_official

        report = load_official(self, path, strict=strict)
        if self._frozen:
            self.freeze()
        return report

    def materialize(self, device: str | torch.device = "cpu") -> "ViTBackbone":
        """Turn a meta-device build into real (uninitialised) storage and recompute the fixed buffers
        (EVA rotary bands, zero k-bias). Weights must be loaded afterwards."""
        from .checkpoints import materialize_buffers

        self.to_empty(device=device)
        materialize_buffers(self, device)
        return self


def set_grad_checkpointing(module: nn.Module, enable: bool = True) -> int:
    """Switch per-block activation checkpointing of every :class:`ViTBackbone` inside ``module`` at run time.

    Only the backbones' own config copies change (the method's config, and so a run's spec hash, stay as they
    are: checkpointing changes memory and time, not results). Returns the number of backbones switched."""
    n = 0
    for m in module.modules():
        if isinstance(m, ViTBackbone):
            m.cfg = dataclasses.replace(m.cfg, grad_checkpointing=bool(enable))
            n += 1
    return n


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class MultiScaleResample(nn.Module):
    """Rein's multi-scale neck: four stride-p maps -> strides p/4, p/2, p, 2p by bilinear resampling.

    Each tap is resampled on its own (x4, x2, x1, x0.5; ``align_corners=False``), as on Rein's path with
    Rein tokens. (Rein's plain ``DinoVisionTransformer.forward`` resamples the *already upsampled* first
    map for the second and fourth outputs - a quirk of the no-Rein baseline path, not reproduced here.)
    No parameters.
    """

    def __init__(self, scales: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)):
        super().__init__()
        self.scales = tuple(float(s) for s in scales)

    def forward(self, feats: list[Tensor] | tuple[Tensor, ...]) -> list[Tensor]:
        if len(feats) != len(self.scales):
            raise ValueError(f"MultiScaleResample: expected {len(self.scales)} maps, got {len(feats)}")
        out = []
        for f, s in zip(feats, self.scales):
            out.append(f if s == 1.0 else F.interpolate(f, scale_factor=s, mode="bilinear", align_corners=False))
        return out


class SimpleFPN(nn.Module):
    """tqdm's "simple FPN" on four stride-p maps (from BEiT/ViTDet-style segmentation backbones).

    - x4: ConvTranspose2d(2x2, s2) -> BatchNorm -> GELU -> ConvTranspose2d(2x2, s2). As in tqdm's
      ``fpn1``, the *second* deconvolution has no norm/activation after it.
    - x2: one ConvTranspose2d(2x2, s2).
    - x1: identity.
    - x0.5: 2x2 max-pool, stride 2.

    tqdm uses SyncBatchNorm; this module uses plain BatchNorm2d (``sync_bn=True`` builds SyncBatchNorm,
    which needs an initialised process group at train time; or call
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` on the method under DDP). Trainable.
    """

    def __init__(self, dim: int, sync_bn: bool = False):
        super().__init__()
        bn = nn.SyncBatchNorm if sync_bn else nn.BatchNorm2d
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
            bn(dim),
            nn.GELU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, feats: list[Tensor] | tuple[Tensor, ...]) -> list[Tensor]:
        if len(feats) != 4:
            raise ValueError(f"SimpleFPN: expected 4 maps, got {len(feats)}")
        return [op(f) for op, f in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), feats)]
