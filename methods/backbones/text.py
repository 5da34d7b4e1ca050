"""Frozen CLIP text encoders (the text towers of OpenAI CLIP and EVA02-CLIP), built on open_clip.

Used by tqdm (learnable CoOp context through ``encode_prompt_embeddings``; EVA02-CLIP-L or CLIP ViT-B/16
text), FAMix (style phrases averaged over the 80 ImageNet templates; CLIP RN50/RN101 text) and Vireo (class
embeddings per template; CLIP ViT-L/14@336 text). Only the text tower is built: token embedding, positional
embedding, causal transformer, final LayerNorm and text projection (open_clip's ``TextTransformer``).

Official files: OpenAI ``*.pt`` (TorchScript archives whose text keys sit at the top level:
``token_embedding.weight``, ``transformer.resblocks.*``, ...) and EVA-CLIP ``*.pt`` state dicts (text keys
under ``text.``). ``load_official`` reads either; vision keys are skipped and counted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from open_clip import get_model_config
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer
from torch import Tensor, nn

from methods.weights import KeyReport, read_state_dict

# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class TextEncoderConfig:
    """A CLIP text tower. ``arch`` names the open_clip model whose text tower this is."""

    arch: str
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    embed_dim: int = 512  # output (joint image-text) embedding size
    vocab_size: int = 49408
    mlp_ratio: float = 4.0
    quick_gelu: bool = True  # OpenAI CLIP was trained with QuickGELU; EVA02-CLIP uses GELU
    weights_file: str | None = None  # official file name in the weights folder


def _from_open_clip(arch: str, *, quick_gelu: bool, weights_file: str | None) -> TextEncoderConfig:
    cfg = get_model_config(arch)
    if cfg is None:
        raise KeyError(f"open_clip has no model config {arch!r}")
    text = cfg["text_cfg"]
    return TextEncoderConfig(
        arch=arch, context_length=text.get("context_length", 77), width=text["width"], layers=text["layers"],
        heads=text["heads"], embed_dim=cfg["embed_dim"], vocab_size=text.get("vocab_size", 49408),
        mlp_ratio=text.get("mlp_ratio", 4.0), quick_gelu=quick_gelu, weights_file=weights_file,
    )


TEXT_CONFIGS: dict[str, TextEncoderConfig] = {
    "ViT-B-16": _from_open_clip("ViT-B-16", quick_gelu=True, weights_file="ViT-B-16.pt"),
    "ViT-L-14-336": _from_open_clip("ViT-L-14-336", quick_gelu=True, weights_file="ViT-L-14-336px.pt"),
    "RN50": _from_open_clip("RN50", quick_gelu=True, weights_file="RN50.pt"),
    "RN101": _from_open_clip("RN101", quick_gelu=True, weights_file="RN101.pt"),
    "EVA02-L-14-336": _from_open_clip("EVA02-L-14-336", quick_gelu=False,
                                      weights_file="EVA02_CLIP_L_336_psz14_s6B.pt"),
    "EVA02-L-14": _from_open_clip("EVA02-L-14", quick_gelu=False, weights_file="EVA02_CLIP_L_psz14_s4B.pt"),
    # CPU-sized tower for tests and the miniature scale (real tokenizer, so the full vocabulary).
    "tiny": TextEncoderConfig(arch="tiny", width=64, layers=2, heads=2, embed_dim=32, quick_gelu=True),
}
"""Text towers by name. Shapes come from open_clip's model configs; QuickGELU for the OpenAI towers."""


def text_config(name: str, **overrides) -> TextEncoderConfig:
    """``TEXT_CONFIGS[name]`` with field overrides (e.g. ``context_length=13`` as tqdm's EVA prompt)."""
    try:
        cfg = TEXT_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown text encoder {name!r}; available: {', '.join(TEXT_CONFIGS)}") from None
    return dataclasses.replace(cfg, **overrides)


# --------------------------------------------------------------------------- prompt templates

IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)
"""The 80 prompt templates of CLIP's ImageNet zero-shot evaluation (Radford et al., 2021)."""

TQDM_ORIGAMI_TEMPLATE = "a clean origami of a {}"
"""tqdm's language-regularizer prompt ("a clean origami of a {class}")."""


def fill_template(template: str, classname: str) -> str:
    """Put ``classname`` into a template written with ``{}`` (or ``{class}`` / ``{classname}``)."""
    for slot in ("{}", "{class}", "{classname}"):
        if slot in template:
            return template.replace(slot, classname)
    raise ValueError(f"template {template!r} has no class slot; write it with '{{}}', e.g. 'a photo of a {{}}.'")


# --------------------------------------------------------------------------- the encoder


class CLIPTextEncoder(nn.Module):
    """A CLIP text tower: tokens -> [SOS ... EOT] transformer -> EOT feature -> ln_final -> projection.

    Frozen by default: every parameter has ``requires_grad=False`` and the module stays in eval mode when
    ``train()`` is called. ``encode_prompt_embeddings`` still passes gradients to its *input* embeddings
    (CoOp's learnable context vectors). Parameters live under ``text.`` (the EVA-CLIP / open_clip
    custom-text layout).
    """

    def __init__(self, cfg: TextEncoderConfig, *, frozen: bool = True):
        super().__init__()
        self.cfg = cfg
        self.frozen = frozen
        self.text = TextTransformer(
            context_length=cfg.context_length, vocab_size=cfg.vocab_size, width=cfg.width, heads=cfg.heads,
            layers=cfg.layers, mlp_ratio=cfg.mlp_ratio, output_dim=cfg.embed_dim,
            act_layer=QuickGELU if cfg.quick_gelu else nn.GELU, norm_layer=LayerNorm,
        )
        self._tokenizer: SimpleTokenizer | None = None
        if frozen:
            self.requires_grad_(False)
            self.eval()

    # ------------------------------------------------------------------ small helpers
    @property
    def width(self) -> int:
        return self.cfg.width

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def device(self) -> torch.device:
        return self.text.token_embedding.weight.device

    def train(self, mode: bool = True) -> "CLIPTextEncoder":
        return super().train(False if self.frozen else mode)

    @property
    def tokenizer(self) -> SimpleTokenizer:
        """open_clip's CLIP BPE tokenizer (the vocabulary ships in the wheel; built on first use)."""
        if self._tokenizer is None:
            self._tokenizer = SimpleTokenizer(context_length=self.cfg.context_length)
        return self._tokenizer

    @property
    def sot_token_id(self) -> int:
        return self.tokenizer.sot_token_id

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_token_id

    def tokenize(self, texts: Sequence[str], context_length: int | None = None) -> Tensor:
        """Token ids [N, L] (L = ``context_length`` or the config's), [SOS] text [EOT] then zero padding.
        Texts too long are cut and end with [EOT]. Returned on the CPU."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.cfg.context_length
        if length > self.cfg.context_length:
            raise ValueError(f"context_length {length} exceeds the encoder's {self.cfg.context_length} positions")
        return self.tokenizer(list(texts), context_length=length)

    @staticmethod
    def eot_indices(tokens: Tensor) -> Tensor:
        """Position of [EOT] in each row (it has the largest id in CLIP's vocabulary)."""
        return tokens.argmax(dim=-1)

    def token_embedding_of(self, texts: Sequence[str], context_length: int | None = None) -> tuple[Tensor, Tensor]:
        """(word embeddings [N, L, W] without positions, token ids [N, L]) of ``texts`` on this device."""
        tokens = self.tokenize(texts, context_length).to(self.device)
        return self.text.token_embedding(tokens), tokens

    # ------------------------------------------------------------------ encoding
    def _causal_mask(self, length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        mask = self.text.attn_mask
        if mask is None or mask.is_meta or mask.device != device:
            mask = torch.full((self.cfg.context_length,) * 2, float("-inf"), device=device).triu_(1)
        return mask[:length, :length].to(dtype)

    def encode_prompt_embeddings(self, token_embeddings: Tensor, eot_indices: Tensor,
                                 normalize: bool = False) -> Tensor:
        """CoOp entry point: run the tower on given input embeddings [N, L, W] (e.g. [SOS] + learnable
        context + class-name word embeddings), read the feature at ``eot_indices`` [N], apply ln_final and
        the text projection -> [N, E]. Positional embeddings are added here (the first L positions)."""
        n, length, width = token_embeddings.shape
        if width != self.cfg.width:
            raise ValueError(f"token embeddings have width {width}; "
                             f"the {self.cfg.arch} text tower needs {self.cfg.width}")
        if length > self.text.positional_embedding.shape[0]:
            raise ValueError(f"sequence length {length} exceeds {self.text.positional_embedding.shape[0]} positions")
        dtype = self.text.transformer.get_cast_dtype()
        x = token_embeddings.to(dtype) + self.text.positional_embedding[:length].to(dtype)
        x = self.text.transformer(x, attn_mask=self._causal_mask(length, x.device, x.dtype))
        x = self.text.ln_final(x)
        x = x[torch.arange(n, device=x.device), eot_indices.to(x.device)]
        proj = self.text.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x, dim=-1) if normalize else x

    def encode_tokens(self, tokens: Tensor, normalize: bool = True) -> Tensor:
        """Embeddings [N, E] of token ids [N, L] (L <= context length)."""
        tokens = tokens.to(self.device)
        return self.encode_prompt_embeddings(self.text.token_embedding(tokens), self.eot_indices(tokens), normalize)

    def encode(self, texts: Sequence[str], normalize: bool = True, batch_size: int = 256) -> Tensor:
        """Embeddings [N, E] of ``texts`` (L2-normalised unless ``normalize=False``)."""
        tokens = self.tokenize(texts)
        return torch.cat([self.encode_tokens(tokens[i:i + batch_size], normalize)
                          for i in range(0, len(tokens), batch_size)])

    def encode_templates(self, classnames: Sequence[str], templates: Sequence[str], batch_size: int = 256) -> Tensor:
        """Normalised embeddings [C, T, E] of every (class, template) prompt, kept per template (Vireo's
        head)."""
        if not templates:
            raise ValueError("at least one template is needed")
        texts = [fill_template(t, c) for c in classnames for t in templates]
        emb = self.encode(texts, normalize=True, batch_size=batch_size)
        return emb.view(len(classnames), len(templates), -1)

    def encode_with_templates(self, classnames: Sequence[str], templates: Sequence[str],
                              batch_size: int = 256) -> Tensor:
        """CLIP zero-shot class embeddings [C, E]: the mean of the normalised per-template embeddings,
        re-normalised."""
        return F.normalize(self.encode_templates(classnames, templates, batch_size).mean(dim=1), dim=-1)

    # ------------------------------------------------------------------ official weights
    _SKIP_TOP = ("visual.", "logit_scale", "logit_bias", "attn_mask", "input_resolution", "context_length",
                 "vocab_size")
    _TEXT_TOP = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")

    def official_text_state(self, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str], list[str]]:
        """Split an official CLIP / EVA-CLIP state dict into (this module's ``text.*`` keys, ignored keys,
        unexpected keys). Handles OpenAI (top-level text keys) and EVA-CLIP / open_clip custom-text
        (``text.*``) layouts."""
        out: dict[str, Tensor] = {}
        ignored: list[str] = []
        unexpected: list[str] = []
        for key, value in state.items():
            if key.startswith("text."):
                name = key
            elif key.startswith(self._TEXT_TOP):
                name = "text." + key
            elif key.startswith(self._SKIP_TOP):
                ignored.append(key)
                continue
            else:
                unexpected.append(key)
                continue
            if name.endswith("attn_mask") or name.endswith("logit_scale"):
                ignored.append(key)  # rebuilt / not part of the tower
                continue
            out[name] = value
        return out, ignored, unexpected

    def load_official(self, path: str | Path) -> KeyReport:
        """Load the text tower from an official file (OpenAI TorchScript archive / state dict, EVA-CLIP
        state dict). Vision keys are ignored (counted in ``report.ignored``). Works on a meta-device module
        too (tensors are assigned). A checkpoint with more positions than ``context_length`` is cut."""
        state = read_state_dict(path)
        text_state, ignored, unexpected = self.official_text_state(state)
        own = self.state_dict()
        converted: list[str] = []
        pos_key = "text.positional_embedding"
        if pos_key in text_state and text_state[pos_key].shape[0] > own[pos_key].shape[0]:
            rows = text_state[pos_key].shape[0]
            text_state[pos_key] = text_state[pos_key][: own[pos_key].shape[0]]
            converted.append(f"{pos_key} (first {own[pos_key].shape[0]} of {rows} positions)")
        unexpected += [k for k in text_state if k not in own]
        errors = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in text_state.items() if k in own and v.shape != own[k].shape]
        if errors:
            raise ValueError(
                f"{path}: text tower shapes do not match the {self.cfg.arch!r} config (width {self.cfg.width}, "
                f"{self.cfg.layers} layers, embed {self.cfg.embed_dim}); is this the right file for this arch?\n  "
                + "\n  ".join(errors))
        load = {k: v.to(dtype=own[k].dtype) for k, v in text_state.items() if k in own}
        on_meta = any(p.is_meta for p in self.parameters())
        self.load_state_dict(load, strict=False, assign=on_meta)
        if on_meta:
            device = self.device
            if not device.type == "meta":
                mask = torch.full((self.cfg.context_length,) * 2, float("-inf"), device=device).triu_(1)
                self.text.attn_mask = mask
        missing = sorted(k for k in own if k not in load)
        return KeyReport(missing=missing, unexpected=sorted(unexpected), converted=converted, ignored=ignored)


def build_text_encoder(name: str, *, meta: bool = False, frozen: bool = True, **overrides) -> CLIPTextEncoder:
    """``CLIPTextEncoder(text_config(name, **overrides))``; ``meta=True`` builds it on the meta device
    (no memory, instant) for shape checks or a later ``load_official``."""
    cfg = text_config(name, **overrides)
    if meta:
        with torch.device("meta"):
            return CLIPTextEncoder(cfg, frozen=frozen)
    return CLIPTextEncoder(cfg, frozen=frozen)
