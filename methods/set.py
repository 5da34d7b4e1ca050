"""SET: "Spectral-dEcomposed Tokens for Domain Generalized Semantic Segmentation" (ACM MM 2024), reference code
``JingjunYi/SET`` (a fork of Rein's mmseg-1.x code; the method is the "oursv3" block of its
``rein/models/backbones/reins.py``). shared/specs/methods.md §3, decisions.md §7.

SET keeps Rein's frozen DINOv2-L, its per-block token refinement, its token -> query link and its
Mask2Former head (:mod:`methods.rein`), and changes what the tokens refine. After every block the patch
features f are split into the **phase** P and **amplitude** A of their Fourier spectrum, and Rein's update is
computed on each of them with its own token set:

- **phase branch**: Rein's LoRA tokens T_i = A_i B_i (100 x 1024, rank 16) and Rein's two MLPs
  (``mlp_token2feat``, ``mlp_delta_f``): dP = MLP_delta(S[:, 1:] MLP_t2f(T_i[1:]) + P), S = softmax(P T_i^T/sqrt C);
- **amplitude branch**: a second, full-rank token set (``learnable_tokens2``, 24 x 100 x 1024) with its own
  MLPs (``mlp_token2feat2``, ``mlp_delta_f2``); its token-attention logits are **instance-normalised across
  the tokens** before the softmax ("attention optimization", M_is^norm of the paper figure; the reference
  normalises first and scales by 1/sqrt(C) afterwards): dA = MLP_delta2(S'[:, 1:] MLP_t2f2(T'_i[1:]) + A);
- recombination: dF = F^-1(dA e^{i dP}), f' = f + alpha dF (one learnable alpha, init 1e-3, as in Rein).
  Token 0 of each set is Rein's "sink" (its attention column and the token are dropped).

The queries of the head come from the phase (LoRA) tokens (``ReinTokens.queries``, inherited unchanged).

**Which spectrum** (decisions.md §7; ``SETConfig.fft_axes``):

- ``"spatial"`` (default; the paper's per-feature-map spectrum): the patch tokens of each sample are laid
  out on their token grid [B, h, w, C] and transformed over (h, w), per sample and channel. Each frequency
  (u, v) then plays the role of a token position: its C phases (or amplitudes) are the vector the tokens
  attend from. The transform pair is exact: forward ``fft2`` and inverse ``ifft2`` with the same ``fft_norm``
  (default ``"ortho"``, so amplitudes keep the features' energy scale, Parseval); the inverse of a
  spectrum that is not Hermitian is complex and its **real part** is taken (= the inverse of the spectrum's
  Hermitian part; every frequency bin contributes). The paper fixes neither the normalisation nor the
  handling of the non-Hermitian spectrum; these are this harness's choices. Predictions of this mode do not
  depend on which other images share the batch.
- ``"batch_channel"`` (the released code's behaviour): the reference holds the features as
  (N tokens, B, C) and ``torch.fft.fft2`` transforms the last two axes, i.e. over **(batch, channel)**, not
  over space. The "spectrum" therefore mixes the samples of a batch (4 in training; 1 crop at a time in
  mmseg's and this harness's default sliding-window inference, where the batch axis is a no-op), so
  **predictions depend on batch composition**. The quirks are reproduced: forward ``norm="backward"``;
  the inverse divides the stacked (re, im) tensor by sqrt(2C) and calls ``irfft2(norm="ortho",
  s=(B, C))`` on the full (non-Hermitian) spectrum. Reading of that call: with ``s`` given, the output has
  the input's shape (B, C) (without ``s`` it would be 2(C-1) = 2046 channels wide); irfft2 runs a complex
  inverse over the batch axis and a complex-to-real inverse over the channel axis that reads only channel
  bins 0..C/2 (the imaginary parts of bins 0 and C/2 ignored), so the branches' outputs for bins
  C/2+1..C-1 are discarded (and get no gradient). The round trip of unchanged phase/amplitude is
  sqrt(B/2) f, not f.

Both modes share the reference's guards: amplitude = sqrt(re^2 + im^2) with the squared magnitude raised to
1e-5 where it is below 1e-5, phase = atan2(im, re) with |re| < 1e-5 replaced by +1e-5. The spatial mode
also turns a -0.0 imaginary part into +0.0, so a real bin with a negative value (e.g. a DC term) has phase
+pi whatever the FFT library's sign of zero (the released mode keeps the raw sign, as the reference). The transforms run
in float32 with autocast off (FFTs do not take bfloat16).

Trainable parameters of the token module: 7,546,881 for DINOv2-L (Rein's 2,990,081 + the amplitude branch
4,556,800 = 24x100x1024 tokens + two 1024x1024 Linear layers), the same count as the reference ``LoRAReins``
with the "oursv3" additions; in both modes (tests assert it on the meta device).

Training (``configs/my/citys_rein_dinov2_mask2former_512x512_bs1x4.py``): Rein's 512 recipe (40k x 4, AdamW
1e-4 wd 0.05, poly 0.9 without warmup, seed 42, shortest edge 256..1024, crop 512) on **Cityscapes train**;
:func:`set_recipe`. Evaluation: Rein's pipelines (eval variant ``"rein"``).

Official checkpoints: Rein's mmseg-1.x layout (``backbone.reins.*`` + mmdet ``decode_head.*``,
:func:`methods.rein.convert_rein_checkpoint`) with the amplitude branch under the reference's names
``learnable_tokens2``, ``mlp_token2feat2``, ``mlp_delta_f2`` (read from ``JingjunYi/SET`` reins.py,
commit b349b3f). This module uses the same names, so the mapping table :data:`SET_AMPLITUDE_KEYS` is the
identity today; a renamed release needs one line changed there. The SET README links no trained weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from methods.base import TrainRecipe
from methods.registry import register_method
from methods.rein import Rein, ReinConfig, ReinTokens, rein_recipe, rein_reference_template, rein_token_init_bound

__all__ = [
    "FFT_AXES",
    "SET",
    "SETConfig",
    "SETTokens",
    "SET_AMPLITUDE_KEYS",
    "rename_set_amplitude_keys",
    "set_recipe",
    "set_reference_template",
    "spectral_compose",
    "spectral_decompose",
    "token_instance_norm",
]

FFT_AXES = ("spatial", "batch_channel")
"""``spatial``: the paper's per-feature-map spectrum over the token grid (default); ``batch_channel``: the
released code's transform over (batch, channel)."""

FFT_NORMS = ("ortho", "backward", "forward")
SPECTRAL_EPS = 1e-5
"""The reference's denormal guard: squared magnitudes and real parts with |x| < 1e-5 become 1e-5."""

SET_AMPLITUDE_KEYS: dict[str, str] = {
    "learnable_tokens2": "learnable_tokens2",
    "mlp_token2feat2.": "mlp_token2feat2.",
    "mlp_delta_f2.": "mlp_delta_f2.",
}
"""Amplitude-branch parameters: reference name (prefix, relative to ``backbone.reins.``) -> this module's name
(relative to ``reins.``). Names read from ``JingjunYi/SET`` ``rein/models/backbones/reins.py``."""


# ------------------------------------------------------------------------------------------ spectra
def _guard(x: Tensor, eps: float = SPECTRAL_EPS) -> Tensor:
    """The reference's ``replace_denormals``: entries with -eps < x < eps become +eps (no gradient there)."""
    return torch.where((x < eps) & (x > -eps), torch.full_like(x, eps), x)


def _fp32(device: torch.device):
    """Autocast off (FFTs need float32/64 inputs) where the device type knows autocast."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _grid_of(num_tokens: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is None:
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"SET's spatial spectrum needs the token grid (h, w): {num_tokens} patch tokens are not a "
                             "square grid; pass grid=(h, w) (the backbone's after_block hook does)")
        return side, side
    h, w = int(grid[0]), int(grid[1])
    if h * w != num_tokens:
        raise ValueError(f"token grid {h}x{w} does not hold the {num_tokens} patch tokens")
    return h, w


def _check_mode(fft_axes: str, fft_norm: str) -> None:
    if fft_axes not in FFT_AXES:
        raise ValueError(f"fft_axes must be one of {FFT_AXES}, got {fft_axes!r}")
    if fft_norm not in FFT_NORMS:
        raise ValueError(f"fft_norm must be one of {FFT_NORMS}, got {fft_norm!r}")


def spectral_decompose(feats: Tensor, fft_axes: str = "spatial", grid: tuple[int, int] | None = None,
                       fft_norm: str = "ortho") -> tuple[Tensor, Tensor]:
    """(phase, amplitude) of patch features [B, N, C], both [B, N, C] float32 (float64 stays float64).

    ``spatial``: fft2 over the (h, w) token grid of each sample and channel with ``fft_norm``; entry n of the
    result is frequency (n // w, n % w). ``batch_channel``: the reference's fft2 over (batch, channel),
    ``norm="backward"`` (``fft_norm`` unused)."""
    _check_mode(fft_axes, fft_norm)
    if feats.dim() != 3:
        raise ValueError(f"SET expects patch features [B, N, C], got {tuple(feats.shape)}")
    with _fp32(feats.device):
        x = feats if feats.dtype == torch.float64 else feats.float()
        b, n, c = x.shape
        if fft_axes == "spatial":
            h, w = _grid_of(n, grid)
            spec = torch.fft.fft2(x.reshape(b, h, w, c), dim=(1, 2), norm=fft_norm).reshape(b, n, c)
        else:
            spec = torch.fft.fft2(x, dim=(0, 2), norm="backward")
        re, im = spec.real, spec.imag
        if fft_axes == "spatial":  # -0.0 -> +0.0: real bins with re < 0 get phase +pi on every FFT backend
            im = im + 0.0
        amplitude = torch.sqrt(_guard(re.square() + im.square()))
        phase = torch.atan2(im, _guard(re))
    return phase, amplitude


def spectral_compose(phase: Tensor, amplitude: Tensor, fft_axes: str = "spatial",
                     grid: tuple[int, int] | None = None, fft_norm: str = "ortho") -> Tensor:
    """Real features [B, N, C] from a spectrum given as phase and amplitude [B, N, C] (amplitude e^{i phase}).

    ``spatial``: the real part of ifft2 over the token grid with ``fft_norm`` (the exact inverse of
    :func:`spectral_decompose`). ``batch_channel``: the reference's ``irfft2(z / sqrt(2C), s=(B, C),
    norm="ortho")`` over (batch, channel) on the full spectrum (see the module docstring)."""
    _check_mode(fft_axes, fft_norm)
    if phase.shape != amplitude.shape or phase.dim() != 3:
        raise ValueError(f"phase {tuple(phase.shape)} and amplitude {tuple(amplitude.shape)} must both be [B, N, C]")
    with _fp32(phase.device):
        dtype = torch.float64 if torch.float64 in (phase.dtype, amplitude.dtype) else torch.float32
        p, a = phase.to(dtype), amplitude.to(dtype)
        b, n, c = p.shape
        if fft_axes == "spatial":
            h, w = _grid_of(n, grid)
            z = torch.complex(a * torch.cos(p), a * torch.sin(p))  # amplitude e^{i phase} (any sign of amplitude)
            return torch.fft.ifft2(z.reshape(b, h, w, c), dim=(1, 2), norm=fft_norm).real.reshape(b, n, c)
        scale = math.sqrt(2 * c)  # the reference divides the stacked (re, im) [N, B, C, 2] by sqrt(C * 2)
        z = torch.complex(a * torch.cos(p) / scale, a * torch.sin(p) / scale)
        return torch.fft.irfft2(z, s=(b, c), dim=(0, 2), norm="ortho")


def token_instance_norm(logits: Tensor, eps: float = 1e-5) -> Tensor:
    """Instance norm across the tokens (last axis) of token-attention logits [..., m]: zero mean and unit
    (biased) variance per feature, no affine; what ``F.instance_norm`` does to the reference's (N, B, m)."""
    mean = logits.mean(dim=-1, keepdim=True)
    var = logits.var(dim=-1, unbiased=False, keepdim=True)
    return (logits - mean) / torch.sqrt(var + eps)


# ------------------------------------------------------------------------------------------ the SET module
class SETTokens(ReinTokens):
    """Spectral-decomposed tokens: Rein's LoRA tokens and MLPs refine the phase, a full-rank token set with its
    own MLPs and instance-normalised attention refines the amplitude, and the recombined spectrum is
    inverse-transformed into the feature update (see the module docstring).

    Parameters: Rein's (``learnable_tokens_a/_b``, ``scale``, ``mlp_token2feat``, ``mlp_delta_f``, ``link``)
    plus ``learnable_tokens2`` [L, m, C], ``mlp_token2feat2`` and ``mlp_delta_f2`` (Linear C -> C, shared
    by all layers). The phase branch is Rein's :meth:`delta` unchanged; the amplitude branch is
    :meth:`amplitude_delta` (logits :meth:`amplitude_logits`). ``fft_axes``: ``"spatial"`` (paper) or
    ``"batch_channel"`` (released code; predictions depend on batch composition); ``fft_norm``: the spatial
    transform pair's normalisation.
    """

    def __init__(self, num_layers: int, embed_dim: int, *, token_length: int = 100, lora_dim: int | None = 16,
                 patch_size: int = 16, scale_init: float = 1e-3, use_softmax: bool = True,
                 link_to_query: bool = True, query_dim: int = 256, fft_axes: str = "spatial",
                 fft_norm: str = "ortho"):
        _check_mode(fft_axes, fft_norm)
        super().__init__(num_layers, embed_dim, token_length=token_length, lora_dim=lora_dim, patch_size=patch_size,
                         scale_init=scale_init, use_softmax=use_softmax, link_to_query=link_to_query,
                         query_dim=query_dim)
        self.fft_axes, self.fft_norm = fft_axes, fft_norm
        self.learnable_tokens2 = nn.Parameter(torch.empty(num_layers, token_length, embed_dim))
        self.mlp_token2feat2 = nn.Linear(embed_dim, embed_dim)
        self.mlp_delta_f2 = nn.Linear(embed_dim, embed_dim)
        self.reset_amplitude_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "learnable_tokens2"):  # Rein's __init__ calls this before the amplitude branch exists
            self.reset_amplitude_parameters()

    @torch.no_grad()
    def reset_amplitude_parameters(self) -> None:
        """Amplitude tokens uniform(+-sqrt(6 / (3 p^2 + C))) (the full-rank bound), the two MLPs PyTorch's
        Linear init (Kaiming-uniform, a=sqrt(5)), as the reference."""
        bound = rein_token_init_bound(self.patch_size, self.embed_dim, None)
        nn.init.uniform_(self.learnable_tokens2, -bound, bound)
        self.mlp_token2feat2.reset_parameters()
        self.mlp_delta_f2.reset_parameters()

    # ----------------------------------------------------------------------------- amplitude branch
    def get_amplitude_tokens(self, layer: int = -1) -> Tensor:
        """T'_i [m, C] of one layer, or [L, m, C] for ``layer=-1``."""
        return self.learnable_tokens2 if layer == -1 else self.learnable_tokens2[layer]

    def amplitude_logits(self, amplitude: Tensor, tokens: Tensor, layer: int) -> Tensor:
        """[B, N, m]: instance_norm_m(A T'^T), then scaled by 1/sqrt(C) when softmax is used (reference order)."""
        logits = token_instance_norm(amplitude @ tokens.t())
        return logits * self.embed_dim ** -0.5 if self.use_softmax else logits

    def amplitude_delta(self, amplitude: Tensor, tokens: Tensor, layer: int) -> Tensor:
        """dA = MLP_delta2(S'[:, :, 1:] MLP_t2f2(T'[1:]) + A), S' = softmax of :meth:`amplitude_logits`."""
        attn = self.attention(self.amplitude_logits(amplitude, tokens, layer), layer)
        delta_bar = attn[..., 1:] @ self.mlp_token2feat2(tokens[1:])
        return self.mlp_delta_f2(delta_bar + amplitude)

    # ----------------------------------------------------------------------------- the update
    def spectral_delta(self, feats: Tensor, layer: int, grid: tuple[int, int] | None = None) -> Tensor:
        """dF = F^-1(dA e^{i dP}) [B, N, C] (before the alpha scale)."""
        phase, amplitude = spectral_decompose(feats, self.fft_axes, grid, self.fft_norm)
        d_phase = self.delta(phase, self.get_tokens(layer), layer)  # Rein's update, on the phase
        d_amp = self.amplitude_delta(amplitude, self.get_amplitude_tokens(layer), layer)
        return spectral_compose(d_phase, d_amp, self.fft_axes, grid, self.fft_norm)

    def refine(self, feats: Tensor, layer: int, grid: tuple[int, int] | None = None) -> Tensor:
        """f' = f + alpha dF on patch tokens [B, N, C]."""
        return (feats + self.spectral_delta(feats, layer, grid) * self.scale).to(feats.dtype)

    def forward(self, x: Tensor, layer: int, num_prefix_tokens: int = 1,
                grid: tuple[int, int] | None = None) -> Tensor:
        """Tokens after block ``layer`` [B, prefix + N, C] -> refined tokens; prefix (class) tokens unchanged.
        ``grid`` = (h, w) of the N patch tokens (spatial mode; a square grid is assumed when None)."""
        if num_prefix_tokens:
            prefix, feats = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
            return torch.cat([prefix, self.refine(feats, layer, grid)], dim=1)
        return self.refine(x, layer, grid)

    def after_block(self, index: int, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """The ``ViTBackbone`` hook: ``after_block(i, tokens, (h, w))``."""
        return self(tokens, index, grid=grid)


# ------------------------------------------------------------------------------------------ recipe
SET_CITYSCAPES_CONFIG = "JingjunYi/SET configs/my/citys_rein_dinov2_mask2former_512x512_bs1x4.py"
_SET_SOURCES = ("cityscapes", "gta5")


def set_recipe(scale: str, source: str = "cityscapes", **changes: Any) -> TrainRecipe:
    """SET's training recipe (methods.md §3.2), or its CPU-sized twin for ``scale="miniature"``.

    ``cityscapes`` (the released config): Rein's 512 recipe (:func:`methods.rein.rein_recipe` ``"gta5"``:
    40k iterations, batch 4, AdamW 1e-4 wd 0.05, poly 0.9 without warmup, shortest edge 256..1024 capped at
    2048, crop 512, cat_max_ratio 0.75, flip, photometric) on Cityscapes train. The config replaces the train
    pipeline of its Cityscapes base, so the base's ``Resize(1024, 512)`` is not applied (mmengine replaces
    lists when merging); for 2048x1024 images the shortest-edge resize gives the same sizes either way.
    The reference's ``learnable_tokens`` decay key also covers ``learnable_tokens2`` (decay 0).
    ``gta5``: Rein's GTA recipe unchanged (SET releases no GTA config)."""
    if source not in _SET_SOURCES:
        raise ValueError(f"SET has a training recipe for sources {_SET_SOURCES}, not {source!r}")
    base = rein_recipe(scale, "gta5")
    if source == "cityscapes":
        origin = f"{SET_CITYSCAPES_CONFIG} (Rein's 512 recipe on Cityscapes train; seed 42, fp32)"
        base = base.replace(source=("miniature twin of " + origin) if scale == "miniature" else origin)
    return base.replace(**changes)


# ------------------------------------------------------------------------------------------ checkpoints
def set_reference_template(num_layers: int, embed_dim: int, *, token_length: int = 100, lora_dim: int | None = 16,
                           query_dim: int = 256, prefix: str = "backbone.reins.") -> dict[str, tuple[int, ...]]:
    """Names and shapes of the reference SET token module's state dict (``LoRAReins`` with the "oursv3"
    amplitude branch), as found in mmseg checkpoints (for tests that build synthetic ones)."""
    t = rein_reference_template(num_layers, embed_dim, token_length=token_length, lora_dim=lora_dim,
                                query_dim=query_dim, prefix=prefix)
    shapes = {"learnable_tokens2": {"": (num_layers, token_length, embed_dim)},
              "mlp_token2feat2.": {"weight": (embed_dim, embed_dim), "bias": (embed_dim,)},
              "mlp_delta_f2.": {"weight": (embed_dim, embed_dim), "bias": (embed_dim,)}}
    for ref in SET_AMPLITUDE_KEYS:
        for leaf, shape in shapes[ref].items():
            t[prefix + ref + leaf] = shape
    return t


def rename_set_amplitude_keys(state: Mapping[str, Tensor], *, prefix: str = "reins.",
                              table: Mapping[str, str] = SET_AMPLITUDE_KEYS) -> dict[str, Tensor]:
    """Rename the amplitude-branch keys ``prefix + <reference name>`` to ``prefix + <our name>`` (``table``);
    other keys pass unchanged."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        rel = key[len(prefix):] if key.startswith(prefix) else None
        ref = next((r for r in table if rel is not None and rel.startswith(r)), None)
        out[prefix + table[ref] + rel[len(ref):] if ref is not None else key] = value
    return out


# ------------------------------------------------------------------------------------------ the method
@dataclass
class SETConfig(ReinConfig):
    """SET = Rein with :class:`SETTokens` (phase / amplitude token branches)."""

    fft_axes: str = "spatial"  # "spatial" (paper, default) | "batch_channel" (released code; batch-dependent)
    fft_norm: str = "ortho"  # normalisation of the spatial transform pair (the batch_channel mode fixes its own)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_mode(self.fft_axes, self.fft_norm)


@register_method
class SET(Rein):
    """SET (ACM MM 2024): frozen DINOv2-L + spectral-decomposed (phase / amplitude) tokens after every block +
    Rein's token-linked Mask2Former. ``fft_axes="spatial"`` (default) is the paper's per-feature-map spectrum;
    ``fft_axes="batch_channel"`` reproduces the released code, whose FFT over (batch, channel) makes the
    predictions depend on which images share the batch (decisions.md §7)."""

    name = "set"
    paper = "SET: Spectral-dEcomposed Tokens for Domain Generalized Semantic Segmentation (ACM MM 2024)"
    config_class = SETConfig
    backbones = ("dinov2_vitl14",)

    config: SETConfig

    def __init__(self, config: SETConfig):
        super().__init__(config)  # Rein: backbone, head, querys2feat, and a ReinTokens replaced here
        vit, head = config.vit, config.head
        self.reins = SETTokens(
            vit.depth, vit.embed_dim, token_length=config.token_length, lora_dim=config.lora_dim,
            patch_size=vit.patch_size, scale_init=config.scale_init, use_softmax=config.use_softmax,
            link_to_query=config.link_to_query, query_dim=head.hidden_dim, fft_axes=config.fft_axes,
            fft_norm=config.fft_norm)

    @classmethod
    def default_config(cls, backbone: str | None = None, *, scale: str = "paper", **fields: Any) -> SETConfig:
        own = {k: fields.pop(k) for k in ("fft_axes", "fft_norm") if k in fields}
        rein = super().default_config(backbone or cls.backbones[0], scale=scale, **fields)
        return SETConfig(**{f.name: getattr(rein, f.name) for f in dataclasses.fields(rein)}, **own)

    @classmethod
    def recipe(cls, *, source: str = "cityscapes", scale: str = "paper", backbone: str | None = None) -> TrainRecipe:
        return set_recipe(scale, source)

    def convert_checkpoint(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rein's conversion (mmseg ``backbone.reins.*`` + mmdet head), then the amplitude-branch names
        (:data:`SET_AMPLITUDE_KEYS`)."""
        return rename_set_amplitude_keys(super().convert_checkpoint(state))
