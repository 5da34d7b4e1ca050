"""tqdm: Textual Query-Driven Mask Transformer (Pak et al., ECCV 2024; reference code ByeongHyunPak/tqdm).

What the paper calls a thing, and where it lives here (shared/specs/methods.md §1):

- **Visual encoder** ``backbone``: EVA02-CLIP-L/14 at 512 px (taps 7/11/15/23, head projection 1024->768) or
  OpenAI CLIP ViT-B/16 (taps 3/5/7/11, drop-path 0.1, projection 768->512), *fine-tuned* at 0.1x the LR.
  Its multi-scale maps come from the trainable "simple FPN" ``neck`` (in the reference it sits inside the
  backbone, so it trains at 0.1x too: the recipe gives ``neck`` the backbone's multiplier).
- **Text encoder** ``text_encoder``: the frozen CLIP / EVA-CLIP text tower, context length 13 (EVA) or 10
  (CLIP-B).
- **Textual object queries**: CoOp prompts ``[SOS] + contexts + class-name tokens`` (class names tokenized
  to length 5, so 8 learnable 768-d context vectors for EVA, 5 of 512-d for CLIP-B, shared by all classes,
  truncated-normal init) -> frozen text tower -> class embeddings t_k. A DenseCLIP-style
  ``context_decoder`` (3 layers, width 256, 4 heads, dropout 0.1) attends from the t_k to the visual
  context [global token; dense tokens] (after the final norm and the head projection), and
  t_k <- t_k + gamma * decoder_out with a per-channel ``gamma``. Query content = ``query_mlp(t_k)``
  (Linear(text_dim->256), ReLU, Linear(256->256)), query position = the head's learned 19x256
  ``query_embed``; one query per class with **fixed matching** (``FixedMatcher``: query i <-> class i).
- **Pixel semantic clarity enhancement**: every pixel-decoder encoder layer cross-attends from the pixel
  tokens to the t_k (``Mask2FormerHead`` with ``text_cross_attention_dim``).
- **Regularizers** (all weight 1.0): language ``loss_reg_language`` (:func:`language_regularization`),
  vision-language ``loss_reg_vision_language`` (:func:`vision_language_regularization` on the pixel-text
  score map / tau 0.07), vision ``loss_reg_vision`` (MSE between the global embedding of the current
  encoder and of ``reg_E0``, a frozen copy of the *initial* encoder, on the same image). ``reg_E0`` has
  no trainable parameters, stays in eval mode, is never written to checkpoints and is rebuilt from the
  official weights by :meth:`TextualQueryDrivenMaskTransformer.load_pretrained`.

Choices where the paper's intent and the reference code differ (default = intent; option = code):

- ``gamma_init``: ``"small"`` (default) starts gamma at 1e-4 as DenseCLIP intends (a small residual);
  ``"reference"`` reproduces the code, which builds gamma at 1e-4 and then re-initialises it with
  ``trunc_normal_`` (std 1), so the refinement starts at full strength.
- ``language_reg_temperature``: ``None`` (default) uses the raw cosine similarities as logits, as the code
  does. The paper body could not be checked for a temperature, so the code's choice is the default; a float
  divides the logits by it. ``language_reg_template`` is the code's "a clean origami of a {}".
- ``vl_loss_average``: ``"valid"`` (default) averages the per-pixel CE over non-ignored pixels (the paper's
  per-pixel CE); ``"all"`` divides by all pixels, ignored ones included (mmseg 0.x ``CrossEntropyLoss``
  without ``avg_non_ignore``, the code's IdentityHead loss).
- ``reg_copy_train_mode``: ``False`` (default) keeps ``reg_E0`` in eval mode. The code calls
  ``reg_E0.eval()`` once at construction, but the runner's later ``model.train()`` puts it back in train
  mode; with CLIP-B (drop-path 0.1) its "frozen" embedding is then stochastic. ``True`` reproduces that.
- ``clip_double_class_embedding``: ``False`` (default) is standard CLIP. The reference CLIP-B backbone
  (DenseCLIP's ``CLIPVisionTransformer``) adds the class embedding twice to the class token; ``True``
  reproduces it (the class token is doubled when official or reference weights are loaded). EVA unaffected.

Architecture facts taken from the reference code's module structure (not from the spec's prose):

- The pixel-decoder FFN is 2048 wide, not 1024: the config's ``ffn_cfgs`` says 1024, but mmdet 2.x's
  ``DetrTransformerDecoderLayer`` passes its own ``feedforward_channels`` argument (2048 in the config) to
  mmcv's ``BaseTransformerLayer``, which overrides ``ffn_cfgs``. The released checkpoints carry 2048.
- The pixel decoder's encoder is an mmdet ``DetrTransformerDecoder`` (return_intermediate), whose final
  ``post_norm`` LayerNorm is applied to the encoder output; ``pixel_decoder_post_norm`` adds it here (a
  LayerNorm ``post_norm`` on the last encoder layer, applied through a forward hook).

Rare-class sampling (class_temp 100, min_pixels 3000, min_crop_ratio 0.5, :data:`TQDM_RARE_CLASS_SAMPLING`) is
part of the paper recipe (``TrainRecipe.rare_class_sampling``); the miniature twin samples uniformly.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.labels import CITYSCAPES_CLASSES, IGNORE_INDEX
from methods.backbones.checkpoints import to_backbone_keys
from methods.backbones.text import TQDM_ORIGAMI_TEMPLATE, CLIPTextEncoder, TextEncoderConfig, fill_template, text_config
from methods.backbones.vit import SimpleFPN, ViTBackbone
from methods.base import Method, ParamRule, TrainRecipe
from methods.heads.mask2former import Mask2FormerHead, semantic_inference
from methods.heads.matcher import FixedMatcher
from methods.heads.mmdet_keys import mmdet_head_key
from methods.registry import register_method
from methods.vit_m2f import ViTMask2FormerConfig, build_vit_m2f_config
from methods.weights import KeyReport

__all__ = [
    "ContextDecoder",
    "ContextDecoderConfig",
    "TQDM_RARE_CLASS_SAMPLING",
    "TQDM_TEXT",
    "TextualQueryDrivenMaskTransformer",
    "TqdmConfig",
    "convert_reference_checkpoint",
    "language_regularization",
    "pixel_text_score_map",
    "tqdm_head_key",
    "tqdm_recipe",
    "vision_language_regularization",
    "vision_regularization",
]

TQDM_TEXT: dict[str, tuple[str, int]] = {
    "eva02_clip_vitl14": ("EVA02-L-14-336", 13),
    "clip_vitb16": ("ViT-B-16", 10),
}
"""Backbone -> (text tower, text context length) of the reference configs."""

CLASS_TOKEN_LENGTH = 5
"""Class names are tokenized to 5 tokens ([SOS] name [EOT] padding); the rest of the context is learnable."""

TQDM_RARE_CLASS_SAMPLING = dict(class_temp=100.0, min_pixels=3000, min_crop_ratio=0.5)
"""DAFormer-style rare-class sampling of the reference data config (TODO: another issue; not applied)."""

_REFERENCE_CONFIGS = {
    ("eva02_clip_vitl14", "gta5"): "configs/tqdm/tqdm_eva_vit-l_1e-5_20k-g2c-512.py",
    ("eva02_clip_vitl14", "cityscapes"): "configs/tqdm/tqdm_eva_vit-l_1e-4_20k-c2b-512.py",
    ("clip_vitb16", "gta5"): "configs/tqdm/tqdm_clip_vit-l_1e-5_20k-g2c-512.py",
    ("clip_vitb16", "cityscapes"): "configs/tqdm/tqdm_clip_vit-l_1e-5_20k-g2c-512.py (C-source optimizer of "
                                   "the EVA config; no CLIP C-source config is released)",
}


# ============================================================================================== configs
@dataclass(frozen=True)
class ContextDecoderConfig:
    """DenseCLIP's text-to-visual context decoder (tqdm: 3 layers, width 256, 4 heads, dropout 0.1)."""

    width: int = 256
    heads: int = 4
    layers: int = 3
    dropout: float = 0.1


@dataclass
class TqdmConfig(ViTMask2FormerConfig):
    """tqdm = fine-tuned CLIP ViT + simple FPN + frozen text tower + CoOp context + context decoder +
    Mask2Former with 19 textual queries. See the module docstring for the reference-code options."""

    text: TextEncoderConfig | None = None
    context_decoder: ContextDecoderConfig = field(default_factory=ContextDecoderConfig)
    class_names: tuple[str, ...] = CITYSCAPES_CLASSES
    class_token_length: int = CLASS_TOKEN_LENGTH
    gamma_init: str = "small"  # "small" (1e-4, DenseCLIP intent) | "reference" (trunc_normal std 1)
    tau: float = 0.07  # temperature of the pixel-text score map
    language_reg_weight: float = 1.0
    vision_language_reg_weight: float = 1.0
    vision_reg_weight: float = 1.0
    language_reg_template: str = TQDM_ORIGAMI_TEMPLATE
    language_reg_temperature: float | None = None  # None: raw cosine logits (reference code)
    vl_loss_average: str = "valid"  # "valid" | "all" (mmseg 0.x: divide by all pixels)
    reg_copy_train_mode: bool = False  # True: reg_E0 follows .train() like in the reference runner
    clip_double_class_embedding: bool = False  # True: DenseCLIP/tqdm CLIP-B class-token quirk
    pixel_decoder_post_norm: bool = True  # mmdet DetrTransformerDecoder post_norm on the encoder output
    sync_bn: bool = False  # SimpleFPN BatchNorm -> SyncBatchNorm (the reference uses SyncBN)

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.text, dict):
            self.text = TextEncoderConfig(**self.text)
        if isinstance(self.context_decoder, dict):
            self.context_decoder = ContextDecoderConfig(**self.context_decoder)
        self.class_names = tuple(self.class_names)
        if self.gamma_init not in ("small", "reference"):
            raise ValueError(f"TqdmConfig.gamma_init={self.gamma_init!r}: expected 'small' or 'reference'")
        if self.vl_loss_average not in ("valid", "all"):
            raise ValueError(f"TqdmConfig.vl_loss_average={self.vl_loss_average!r}: expected 'valid' or 'all'")


# ============================================================================================== context decoder
class _ContextAttention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections and a biased output projection (+ dropout)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"context decoder width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        def split(x: Tensor) -> Tensor:  # [B, N, C] -> [B, M, N, C/M]
            return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(q)), split(self.k_proj(k)), split(self.v_proj(v)))
        return self.proj_drop(self.proj(out.transpose(1, 2).flatten(2)))


class _ContextDecoderLayer(nn.Module):
    """Pre-norm decoder layer: self-attention over the text tokens, cross-attention to the visual
    context, MLP (GELU, dropout); residuals around each."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.self_attn = _ContextAttention(dim, heads, dropout)
        self.cross_attn = _ContextAttention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y)
        x = x + self.cross_attn(self.norm2(x), memory, memory)
        return x + self.dropout(self.mlp(self.norm3(x)))


class ContextDecoder(nn.Module):
    """DenseCLIP's context decoder: text embeddings [B, K, E] attend to the visual context [B, N, E]
    (both projected to ``width``), output projected back to E (the text-embedding update)."""

    def __init__(self, visual_dim: int, cfg: ContextDecoderConfig = ContextDecoderConfig()):
        super().__init__()
        w = cfg.width
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, w), nn.LayerNorm(w))
        self.text_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, w))
        self.decoder = nn.ModuleList(_ContextDecoderLayer(w, cfg.heads, cfg.dropout) for _ in range(cfg.layers))
        self.out_proj = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, visual_dim))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, text: Tensor, visual: Tensor) -> Tensor:
        memory = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.decoder:
            x = layer(x, memory)
        return self.out_proj(x)


# ============================================================================================== losses
def pixel_text_score_map(dense: Tensor, text: Tensor) -> Tensor:
    """Cosine similarity of every dense visual embedding [B, E, h, w] with every text embedding
    [B, K, E] (or [K, E]) -> [B, K, h, w]."""
    if text.dim() == 2:
        text = text.unsqueeze(0).expand(dense.shape[0], -1, -1)
    return torch.einsum("bchw,bkc->bkhw", F.normalize(dense, dim=1), F.normalize(text, dim=-1))


def language_regularization(text: Tensor, frozen: Tensor, temperature: float | None = None) -> Tensor:
    """L_reg^L: for every learned class embedding t_i (``text`` [B, K, E] or [K, E]) the logits over the K
    frozen prompt embeddings (``frozen`` [K, E]) are cos(t_i, e_j) (divided by ``temperature`` when
    given); cross-entropy with target i (class i <-> prompt i), mean over classes and images."""
    if text.dim() == 2:
        text = text.unsqueeze(0)
    logits = torch.einsum("bkc,jc->bkj", F.normalize(text.float(), dim=-1), F.normalize(frozen.float(), dim=-1))
    if temperature is not None:
        logits = logits / temperature
    target = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def vision_language_regularization(score_logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX,
                                   average: str = "valid") -> Tensor:
    """L_reg^VL: score map logits [B, K, h, w] (cosine / tau) bilinearly upsampled to the label size
    (align_corners=False), per-pixel CE against ``labels`` [B, H, W] ignoring ``ignore_index``.
    ``average="valid"``: mean over non-ignored pixels; ``"all"``: sum / all pixels (mmseg 0.x)."""
    logits = F.interpolate(score_logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if average == "valid":
        if not (labels != ignore_index).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index)
    if average == "all":
        return F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="sum") / labels.numel()
    raise ValueError(f"average={average!r}: expected 'valid' or 'all'")


def vision_regularization(global_now: Tensor, global_init: Tensor) -> Tensor:
    """L_reg^V: mean squared error between the global (class-token) embeddings of the encoder being
    trained and of its frozen initial copy on the same images."""
    return F.mse_loss(global_now.float(), global_init.float())


# ============================================================================================== checkpoint keys
_TQDM_HEAD_RULES: tuple[tuple[str, str], ...] = (
    # tqdm's pixel-decoder layers are DetrTransformerDecoderLayers (self_attn, norm, cross_attn, norm, ffn,
    # norm): the text cross-attention and its norm sit between the two norms of the standard encoder layer
    (r"pixel_decoder\.encoder\.layers\.(\d+)\.attentions\.1\.attn\.", r"pixel_decoder.layers.\1.text_attn."),
    (r"pixel_decoder\.encoder\.layers\.(\d+)\.norms\.1\.", r"pixel_decoder.layers.\1.text_norm."),
    (r"pixel_decoder\.encoder\.layers\.(\d+)\.norms\.2\.", r"pixel_decoder.layers.\1.norm2."),
    (r"pixel_decoder\.text_proj\.(weight|bias)$", r"pixel_decoder.text_proj.\1"),
    (r"pixel_decoder\.text_pos_embed\.weight$", r"pixel_decoder.text_pos"),
)


def tqdm_head_key(key: str, num_encoder_layers: int, decoder_order: str = "cross_self_ffn") -> str | None:
    """One key of tqdm's mmseg-0.x head (``tqdmHead`` + ``tqdmMSDeformAttnPixelDecoder``, mmcv-1.x layer
    names; relative to ``decode_head.``) -> the full key here, or ``None`` (then reported as unexpected).

    The tqdm additions are mapped here: the pixel-text cross-attention (``attentions.1``) and the three
    norms of each pixel-decoder layer, ``text_proj`` / ``text_pos_embed`` of the pixel decoder, the
    pixel-decoder encoder's ``post_norm`` (-> the last encoder layer's ``post_norm``) and the head's
    ``text_proj`` query MLP (-> ``query_mlp``, which lives on the method). Everything else is the standard
    mmdet Mask2Former head: :func:`methods.heads.mmdet_keys.mmdet_head_key` with ``style="mmcv1"``.
    """
    m = re.fullmatch(r"text_proj\.(\d)\.(weight|bias)", key)
    if m:
        return f"query_mlp.{m.group(1)}.{m.group(2)}"
    if key.startswith("pixel_decoder.encoder.post_norm."):
        return f"decode_head.pixel_decoder.layers.{num_encoder_layers - 1}.post_norm." + key.rsplit(".", 1)[1]
    for pattern, repl in _TQDM_HEAD_RULES:
        new, n = re.subn("^" + pattern, repl, key)
        if n:
            return "decode_head." + new
    new = mmdet_head_key(key, style="mmcv1", decoder_order=decoder_order)
    return None if new is None else "decode_head." + new


def is_reference_checkpoint(state: Mapping[str, Any]) -> bool:
    """True for a state dict of the reference segmentor (mmseg 0.x names), False for this module's own."""
    return any(
        k.startswith(("decode_head.transformer_decoder.", "decode_head.pixel_decoder.encoder.", "backbone.fpn1.",
                      "backbone.blocks.", "backbone.transformer.resblocks.", "reg_E0."))
        or (k.startswith("text_encoder.") and not k.startswith("text_encoder.text."))
        for k in state
    )


def convert_reference_checkpoint(state: Mapping[str, Tensor], config: TqdmConfig
                                 ) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """tqdm's released checkpoint (``state_dict`` of ``tqdm_EVA_CLIP`` / ``tqdm_CLIP``) -> this module's keys.

    Returns (converted state, notes on what was converted, ignored original keys). Keys that match no
    rule are passed through unchanged (so the loader reports them as unexpected). Mapped:

    - ``backbone.*`` (EVA-CLIP ``EVAVisionTransformer`` / DenseCLIP ``CLIPVisionTransformer``) -> ``backbone.vit.*``
      / ``backbone.proj.*`` with the official-file renames of :mod:`methods.backbones.checkpoints`;
      ``backbone.fpn{1,2}.*`` -> ``neck.*``; rotary tables ignored (recomputed).
    - ``text_encoder.*`` -> ``text_encoder.text.*``; ``contexts``, ``gamma``, ``context_decoder.*`` unchanged.
    - ``decode_head.*`` -> :func:`tqdm_head_key` (the shared mmcv-1.x Mask2Former mapping + tqdm's additions).
    - ``reg_E0.*`` ignored: the frozen initial copy is rebuilt from the official weights.
    """
    vit = config.vit
    out: dict[str, Tensor] = {}
    notes: list[str] = []
    ignored: list[str] = []
    visual: dict[str, Tensor] = {}
    num_layers = config.head.pixel_decoder_layers
    for key, value in state.items():
        if key.startswith("reg_E0."):
            ignored.append(key)
        elif key.startswith("backbone.fpn"):
            m = re.fullmatch(r"backbone\.fpn([1-4])\.(\d+)\.(.+)", key)
            if m and m.group(1) == "2" and m.group(2) == "0":
                out[f"neck.fpn2.{m.group(3)}"] = value
            elif m and m.group(1) == "1":
                out[f"neck.fpn1.{m.group(2)}.{m.group(3)}"] = value
            else:
                out[key] = value
        elif key.startswith("backbone."):
            visual["visual." + key[len("backbone."):]] = value
        elif key.startswith("text_encoder."):
            rest = key[len("text_encoder."):]
            if rest.endswith("attn_mask"):
                ignored.append(key)
            else:
                out["text_encoder.text." + rest] = value
        elif key.startswith("decode_head."):
            new = tqdm_head_key(key[len("decode_head."):], num_layers, config.head.decoder_order)
            out[new or key] = value
        else:
            out[key] = value
    if visual:
        layout = "eva_clip" if vit.family == "eva02" else "openai_clip"
        mapped, _, skipped = to_backbone_keys(visual, layout, has_proj=vit.proj_dim is not None)
        ignored += ["backbone." + k[len("visual."):] for k in skipped]
        for k, v in mapped.items():
            out["backbone." + k] = v
        if config.clip_double_class_embedding and vit.family == "clip" and "vit.cls_token" in mapped:
            out["backbone.vit.cls_token"] = 2 * mapped["vit.cls_token"]
            notes.append("backbone.class_embedding x2 (clip_double_class_embedding)")
        notes.append(f"backbone: {len(mapped)} tensors from the {layout} layout")
    notes.append("decode_head: mmcv-1.x Mask2Former names (+ tqdm text parts) -> Mask2FormerHead")
    return out, notes, sorted(ignored)


# ============================================================================================== recipe
def tqdm_recipe(source: str = "gta5", scale: str = "paper", backbone: str = "eva02_clip_vitl14") -> TrainRecipe:
    """The reference optimiser / schedule / data recipe for ``source`` (or its CPU-sized twin).

    G-source (also used for SYNTHIA): AdamW lr 1e-5, wd 1e-4; C-source: lr 1e-4, wd 1e-5 and no decay on
    ``level_embed`` / ``query_embed``. Both: backbone (and its FPN) at 0.1x, text encoder frozen (lr 0),
    no decay on parameters whose name contains ``norm`` (mmcv ``custom_keys`` substring semantics: keys
    matched longest first, the first match sets both multipliers, so the backbone's norms *are* decayed),
    poly 0.9 with min_lr 1e-6 per group, linear warmup 1500 iterations (ratio 1e-6), 20k x 8, fp32.
    """
    if source in ("gta5", "synthia"):
        lr, wd, extra = 1e-5, 1e-4, ()
        cfg_source = "gta5"
    elif source == "cityscapes":
        lr, wd = 1e-4, 1e-5
        # the pixel decoder's level embedding is called level_encoding in the reference: no rule matches it
        extra = (ParamRule("pixel_decoder.level_embed", decay_mult=1.0),
                 ParamRule("level_embed", decay_mult=0.0), ParamRule("query_embed", decay_mult=0.0))
        cfg_source = "cityscapes"
    else:
        raise ValueError(f"tqdm has no recipe for source {source!r}; expected gta5, synthia or cityscapes")
    rules = (ParamRule("text_encoder", lr_mult=0.0), *extra, ParamRule("backbone", lr_mult=0.1),
             ParamRule("neck", lr_mult=0.1), ParamRule("norm", decay_mult=0.0))
    ref = _REFERENCE_CONFIGS.get((backbone, cfg_source), _REFERENCE_CONFIGS[("eva02_clip_vitl14", cfg_source)])
    recipe = TrainRecipe(
        iterations=20000, batch_size=8, optimizer="adamw", lr=lr, weight_decay=wd, param_rules=rules,
        norm_decay_mult=1.0, schedule="poly", power=0.9, min_lr=1e-6, warmup_iters=1500, warmup_ratio=1e-6,
        grad_clip=None, crop_size=(512, 512),
        augmentation=dict(rescale="ratio_range", ratio_range=(0.5, 2.0), base_size=None, cat_max_ratio=0.75,
                          hflip_prob=0.5, photometric=True),
        gta_split="train", eval_variant="tqdm", checkpoint_interval=2000, log_interval=50,
        rare_class_sampling=dict(TQDM_RARE_CLASS_SAMPLING),
        source=f"ByeongHyunPak/tqdm {ref} (+ _base_/schedules/schedule_20k.py); fp32",
    )
    if scale == "miniature":
        # CPU twin, tuned on the built-in miniature benchmark (tiny EVA + tiny text tower from scratch):
        # 300 x 4 crops of 128 px learn more per CPU-second than fewer, larger crops (scale is kept by the
        # rescale ratio, only the context shrinks); ~100 CPU-seconds for training + evaluation.
        recipe = recipe.replace(
            iterations=300, batch_size=4, lr=2e-3, min_lr=1e-6, warmup_iters=20, crop_size=(128, 128),
            augmentation=dict(rescale="ratio_range", ratio_range=(0.75, 1.5), base_size=None, cat_max_ratio=0.75,
                              hflip_prob=0.5, photometric=True),
            checkpoint_interval=150, log_interval=25,
            source="miniature twin of " + recipe.source + " (no rare-class sampling: uniform on the miniature)",
        )
        recipe = dataclasses.replace(recipe, rare_class_sampling=None)  # .replace() skips None values
    elif scale != "paper":
        raise ValueError(f"unknown scale {scale!r}: use 'paper' or 'miniature'")
    return recipe


# ============================================================================================== the method
def _apply_post_norm(module: nn.Module, args: Any, output: Tensor) -> Tensor:
    """Forward hook: the pixel decoder encoder's final LayerNorm (mmdet DetrTransformerDecoder post_norm)."""
    return module.post_norm(output)


@register_method
class TextualQueryDrivenMaskTransformer(Method):
    """tqdm (ECCV 2024): textual object queries + pixel semantic clarity enhancement + 3 regularizers."""

    name = "tqdm"
    paper = "Textual Query-Driven Mask Transformer for Domain Generalized Segmentation (ECCV 2024)"
    config_class = TqdmConfig
    backbones = ("eva02_clip_vitl14", "clip_vitb16")

    config: TqdmConfig

    # ------------------------------------------------------------------ construction
    @classmethod
    def default_config(cls, backbone: str | None = None, *, scale: str = "paper") -> TqdmConfig:
        backbone = backbone or cls.backbones[0]
        if backbone not in TQDM_TEXT:
            raise ValueError(f"tqdm supports backbones {', '.join(cls.backbones)}; got {backbone!r}")
        text_name, context_length = TQDM_TEXT[backbone]
        if scale == "miniature":
            text = text_config("tiny", context_length=context_length)
            ctx = ContextDecoderConfig(width=64, heads=4, layers=3, dropout=0.1)
            # the other miniature heads have none (methods.vit_m2f.miniature_head); tqdm's text-conditioned
            # pixel decoder needs at least one layer (its post-norm), and tqdm gains from its stand-in with 2
            head_changes: dict[str, Any] = {"pixel_decoder_layers": 2}
        else:
            text = text_config(text_name, context_length=context_length)
            ctx = ContextDecoderConfig()
            head_changes = {"pixel_decoder_ffn": 2048}  # effective width of the reference (module docstring)
        head_changes.update(text_cross_attention_dim=text.embed_dim, num_text_tokens=len(CITYSCAPES_CLASSES))
        return build_vit_m2f_config(TqdmConfig, backbone, scale, frozen=False, num_queries=len(CITYSCAPES_CLASSES),
                                    head_changes=head_changes, text=text, context_decoder=ctx)

    @classmethod
    def recipe(cls, *, source: str = "gta5", scale: str = "paper", backbone: str | None = None) -> TrainRecipe:
        return tqdm_recipe(source, scale, backbone or cls.backbones[0])

    def __init__(self, config: TqdmConfig):
        super().__init__(config)
        cfg = config
        if cfg.vit is None or cfg.text is None:
            raise ValueError("TqdmConfig needs vit and text configs: build it with "
                             "TextualQueryDrivenMaskTransformer.default_config(backbone, scale=...)")
        num_classes = len(cfg.class_names)
        text_dim, width = cfg.text.embed_dim, cfg.text.width
        if cfg.vit.proj_dim != text_dim:
            raise ValueError(f"the visual projection ({cfg.vit.proj_dim}) must match the text embedding ({text_dim})")
        if cfg.head.num_queries != num_classes or cfg.head.num_classes != num_classes:
            raise ValueError(f"tqdm uses one query per class: head has {cfg.head.num_queries} queries, "
                             f"{cfg.head.num_classes} classes, {num_classes} class names")
        if cfg.head.text_cross_attention_dim != text_dim or cfg.head.num_text_tokens != num_classes:
            raise ValueError("the head's text_cross_attention_dim / num_text_tokens must be the text embedding "
                             f"size ({text_dim}) / number of classes ({num_classes})")
        num_context = cfg.text.context_length - cfg.class_token_length
        if num_context < 1:
            raise ValueError(f"text context length {cfg.text.context_length} leaves no room for learnable context")

        self.backbone = ViTBackbone(cfg.vit)
        self.neck = SimpleFPN(cfg.vit.embed_dim, sync_bn=cfg.sync_bn)
        self.text_encoder = CLIPTextEncoder(cfg.text, frozen=True)
        self.contexts = nn.Parameter(torch.empty(1, num_context, width))
        self.gamma = nn.Parameter(torch.empty(text_dim))
        self.context_decoder = ContextDecoder(text_dim, cfg.context_decoder)
        hidden = cfg.head.hidden_dim
        self.query_mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden))
        self.decode_head = Mask2FormerHead(cfg.head, matcher=FixedMatcher(num_classes))
        self.decode_head.remove_learned_queries(content=True, pos=False)
        if cfg.pixel_decoder_post_norm:
            last = self.decode_head.pixel_decoder.layers[-1]
            last.post_norm = nn.LayerNorm(hidden)
            last.register_forward_hook(_apply_post_norm)
        self.reg_E0 = self._frozen_copy(self.backbone)

        self.register_buffer("class_tokens", self.text_encoder.tokenize(cfg.class_names, cfg.class_token_length),
                             persistent=False)
        prompts = [fill_template(cfg.language_reg_template, c) for c in cfg.class_names]
        self.register_buffer("reg_prompt_tokens", self.text_encoder.tokenize(prompts), persistent=False)
        self._text_cache: dict[str, tuple[tuple, Tensor]] = {}
        self._last_conversion: tuple[list[str], list[str]] = ([], [])
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.contexts)  # std 1, truncated at +-2 (reference)
        if self.config.gamma_init == "small":
            nn.init.constant_(self.gamma, 1e-4)
        else:
            nn.init.trunc_normal_(self.gamma)

    def _frozen_copy(self, backbone: ViTBackbone) -> ViTBackbone:
        copy_ = copy.deepcopy(backbone)
        copy_.requires_grad_(False)
        if not self.config.reg_copy_train_mode:
            copy_.freeze()  # eval mode, kept through later .train() calls
        return copy_

    def train(self, mode: bool = True) -> "TextualQueryDrivenMaskTransformer":
        super().train(mode)
        self.text_encoder.train(False)
        self.reg_E0.train(bool(mode) and self.config.reg_copy_train_mode)
        return self

    # ------------------------------------------------------------------ text side
    def _cache_key(self, *tensors: Tensor) -> tuple:
        return tuple((id(t), t._version, t.device, t.dtype) for t in tensors)

    def class_text_embeddings(self) -> Tensor:
        """CoOp: [SOS] + learnable contexts + class-name tokens -> frozen text tower -> t_k [K, E]
        (not normalised). Cached while no gradient is needed and nothing changed."""
        tok_emb = self.text_encoder.text.token_embedding.weight
        key = self._cache_key(self.contexts, tok_emb)
        cached = self._text_cache.get("class")
        if not torch.is_grad_enabled() and cached is not None and cached[0] == key:
            return cached[1]
        tokens = self.class_tokens
        words = self.text_encoder.text.token_embedding(tokens)  # [K, Lc, W]
        context = self.contexts.to(words.dtype).expand(tokens.shape[0], -1, -1)
        sequence = torch.cat([words[:, :1], context, words[:, 1:]], dim=1)
        eot = tokens.argmax(dim=-1) + context.shape[1]
        out = self.text_encoder.encode_prompt_embeddings(sequence, eot)
        if not torch.is_grad_enabled():
            self._text_cache["class"] = (key, out)
        return out

    @torch.no_grad()
    def frozen_prompt_embeddings(self) -> Tensor:
        """Normalised frozen embeddings [K, E] of the language-regularizer prompts ("a clean origami of a
        {class}"), computed once per text-tower state."""
        key = self._cache_key(self.text_encoder.text.token_embedding.weight)
        cached = self._text_cache.get("prompts")
        if cached is not None and cached[0] == key:
            return cached[1]
        out = self.text_encoder.encode_tokens(self.reg_prompt_tokens, normalize=True)
        if not torch.is_inference_mode_enabled():  # inference tensors could not be used by a later backward
            self._text_cache["prompts"] = (key, out)
        return out

    def refine_text(self, text: Tensor, visual_context: Tensor) -> Tensor:
        """t_k <- t_k + gamma * ContextDecoder(t_k, [global; dense]) for every image -> [B, K, E]."""
        text = text.unsqueeze(0).expand(visual_context.shape[0], -1, -1)
        return text + self.gamma * self.context_decoder(text, visual_context)

    # ------------------------------------------------------------------ forward
    def forward_features(self, images: Tensor, *, score_map: bool = True) -> dict[str, Any]:
        """Encoder + FPN + textual queries + head. Returns the head outputs plus ``text`` [B, K, E],
        ``score_map`` [B, K, h, w] (cosine; skipped with ``score_map=False``), ``global_embedding`` [B, E]
        and the normalised input ``x``."""
        x = self.normalize(images)
        out = self.backbone(x, project=True)
        feats = self.neck(out.features)
        visual = out.projected  # [B, 1+N, E]: [global; dense] after the final norm and head projection
        text = self.refine_text(self.class_text_embeddings(), visual)
        h, w = out.grid
        dense = visual[:, 1:].transpose(1, 2).reshape(visual.shape[0], -1, h, w)
        outputs = self.decode_head(feats, query_content=self.query_mlp(text), text_context=text)
        outputs.update(text=text, global_embedding=visual[:, 0], x=x)
        if score_map:
            outputs["score_map"] = pixel_text_score_map(dense, text)
        return outputs

    def training_step(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        cfg = self.config
        outputs = self.forward_features(images)
        losses = self.decode_head.losses(outputs, labels)
        if cfg.language_reg_weight:
            losses["loss_reg_language"] = cfg.language_reg_weight * language_regularization(
                outputs["text"], self.frozen_prompt_embeddings(), cfg.language_reg_temperature)
        if cfg.vision_language_reg_weight:
            losses["loss_reg_vision_language"] = cfg.vision_language_reg_weight * vision_language_regularization(
                outputs["score_map"] / cfg.tau, labels, average=cfg.vl_loss_average)
        if cfg.vision_reg_weight:
            losses["loss_reg_vision"] = cfg.vision_reg_weight * vision_regularization(
                outputs["global_embedding"], self.initial_global_embedding(outputs["x"]))
        return losses

    @torch.no_grad()
    def initial_global_embedding(self, x: Tensor) -> Tensor:
        """Global embedding [B, E] of the frozen initial encoder ``reg_E0`` (normalised input ``x``)."""
        final = self.reg_E0(x).final_tokens[:, 0]
        return self.reg_E0.project(final)

    def predict(self, images: Tensor) -> Tensor:
        """As tqdm's mmseg-0.x head: class x mask scores at 1/4 resolution, then the class maps resized to
        the input (not mmseg-1.x's mask-first upsampling, :func:`semantic_inference`)."""
        outputs = self.forward_features(images, score_map=False)
        seg = semantic_inference(outputs["pred_logits"], outputs["pred_masks"])
        return F.interpolate(seg.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)

    # ------------------------------------------------------------------ weights and checkpoints
    def trainable_keys(self) -> set[str]:
        """Everything trainable plus the FPN's BatchNorm statistics; never ``reg_E0`` or the text tower."""
        return {k for k in super().trainable_keys() if not k.startswith(("reg_E0.", "text_encoder."))}

    @classmethod
    def pretrained_files(cls, config: TqdmConfig) -> tuple[str, ...]:
        file = config.vit.weights_file  # at scale="miniature": the stand-in (methods.miniature_weights)
        if file and config.text.weights_file not in (None, file):
            raise ValueError(f"tqdm loads both towers from one file; the configs name {file} and "
                             f"{config.text.weights_file}")
        return (file,) if file else ()

    def pretrained_loaders(self) -> dict[str, Any]:
        return {file: self.load_official for file in self.pretrained_files(self.config)}

    def load_official(self, path) -> KeyReport:
        """Image and text towers from one official CLIP / EVA-CLIP file (both towers are in it); then rebuild
        ``reg_E0`` as a frozen copy of the loaded image tower."""
        visual = self.backbone.load_official(path)
        if self.config.clip_double_class_embedding and self.config.vit.family == "clip":
            with torch.no_grad():
                self.backbone.vit.cls_token.mul_(2)
            visual.converted.append("class token x2 (clip_double_class_embedding)")
        text = self.text_encoder.load_official(path)
        self.reg_E0 = self._frozen_copy(self.backbone)
        self.reg_E0.train(self.training and self.config.reg_copy_train_mode)
        self._text_cache.clear()
        return KeyReport(
            missing=[f"backbone.{k}" for k in visual.missing] + [f"text_encoder.{k}" for k in text.missing],
            unexpected=list(visual.unexpected) + list(text.unexpected),
            converted=list(visual.converted) + list(text.converted),
            ignored=sorted(set(visual.ignored) & set(text.ignored)),  # used by neither tower
        )

    def convert_checkpoint(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Reference (mmseg 0.x) checkpoints are converted (:func:`convert_reference_checkpoint`); this
        module's own checkpoints pass through."""
        if not is_reference_checkpoint(state):
            self._last_conversion = ([], [])
            return state
        out, notes, ignored = convert_reference_checkpoint(state, self.config)
        self._last_conversion = (notes, ignored)
        return out

    def load_checkpoint(self, state, *, strict: bool = False) -> KeyReport:
        report = super().load_checkpoint(state, strict=False)
        report.converted, report.ignored = list(self._last_conversion[0]), list(self._last_conversion[1])
        self._text_cache.clear()
        if strict and not report.ok():
            raise ValueError(f"checkpoint does not match {self.name}: {report.summary()}")
        return report

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)
