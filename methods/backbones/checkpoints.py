"""Reading and converting the official ViT weight files for :class:`methods.backbones.vit.ViTBackbone`.

Layouts understood (detected from the keys, see :func:`detect_layout`):

- ``dinov2``: Meta's ``dinov2_vitl14_pretrain.pth``, a plain state dict (``cls_token``, ``pos_embed``
  [1, 1+37*37, D], ``mask_token``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma,
  norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``). Block-chunked keys ``blocks.C.N.*`` are accepted too.
  ``mask_token`` (masked-image pretraining only) is ignored.
- ``depth_anything_v2``: ``depth_anything_v2_vitl.pth``: the DINOv2 encoder under ``pretrained.`` plus the DPT
  depth decoder under ``depth_head.`` (ignored). A PromptDA-style ``state_dict`` / ``pipeline.`` wrapper is
  unwrapped.
- ``eva_clip``: EVA-CLIP checkpoints (``EVA02_CLIP_L_336_psz14_s6B.pt``, ``EVA02_CLIP_L_psz14_s4B.pt``): the
  image tower under ``visual.`` (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.attn.{q_proj,
  k_proj, v_proj}.weight``, ``q_bias``, ``v_bias``, ``inner_attn_ln``, ``proj``, ``blocks.N.mlp.{w1, w2, w3,
  ffn_ln}``, ``norm1``/``norm2``, ``norm``, ``head``, rotary buffers ``rope.freqs_cos/sin``), the text tower
  under ``text.`` and ``logit_scale`` (ignored). The rotary buffers are fixed functions of the grid and are
  recomputed by timm, so they are ignored. The key mapping is the one timm's ``eva.checkpoint_filter_fn``
  applies (q_bias -> q_proj.bias, inner_attn_ln -> attn.norm, w1/w2/w3 -> fc1_g/fc1_x/fc2, ffn_ln -> mlp.norm);
  a test checks that both give the same keys.
- ``openai_clip``: OpenAI ``ViT-B-16.pt`` (a TorchScript archive; a plain state dict works too):
  ``visual.{conv1, class_embedding, positional_embedding, ln_pre, transformer.resblocks.N.{ln_1,
  attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_post, proj}``; the
  text keys are ignored. Same renames as timm's ``_convert_openai_clip``; ``proj`` [D, P] becomes the
  bias-free ``proj`` Linear of the backbone.
- ``backbone``: a state dict of :class:`ViTBackbone` itself (``vit.*``, ``proj.*``).

Files are read with :func:`methods.weights.read_state_dict` (TorchScript archive, torch zip memory-mapped,
safetensors; ``state_dict``/``model``/``module`` wrappers removed) and the report is a subclass of the
project's :class:`methods.weights.KeyReport`.

Conversions (each one recorded in ``KeyReport.converted``):

- patch-embed kernel resized when the file's patch size differs from the model's, allowed only when the config
  says so (``source_patch_size``). ``patch_resample="bicubic"`` is Rein's conversion
  (``F.interpolate(kernel, 16x16, bicubic, align_corners=False)``, no renormalisation), ``"pinv"`` timm's
  FlexiViT pseudo-inverse resample (keeps token values for resized patches).
- pos-embed resized from the file's grid (37x37 for DINOv2 518/14, 24x24 for EVA 336/14, 16x16 for 224/14,
  14x14 for CLIP 224/16) to the model grid with ``cfg.pos_interp`` (bicubic, or bilinear for tqdm's CLIP),
  ``align_corners=False``, no antialias (as Rein / EVA / DenseCLIP do with plain ``F.interpolate``).
- dtype cast to the model's (OpenAI files are float16).

Missing / unexpected keys are always reported; a shape mismatch raises, naming the key, both shapes and the
likely cause.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.weights import KeyReport as _BaseKeyReport
from methods.weights import MissingWeightsError, locate, read_state_dict

if TYPE_CHECKING:  # pragma: no cover
    from .vit import ViTBackbone, ViTConfig

LAYOUTS = ("dinov2", "depth_anything_v2", "eva_clip", "openai_clip", "backbone")
_LAYOUT_FAMILY = {
    "dinov2": "dinov2",
    "depth_anything_v2": "dinov2",
    "eva_clip": "eva02",
    "openai_clip": "clip",
}


@dataclass
class KeyReport(_BaseKeyReport):
    """Outcome of loading a weight file into a backbone (the project's :class:`methods.weights.KeyReport`
    with the file's layout, path and the number of tensors loaded).

    ``missing``: backbone keys the file did not provide; ``unexpected``: file keys (original names) that
    belong to the encoder but have no place in this backbone; ``converted``: notes on what was changed
    (e.g. "patch_embed 14->16 (bicubic)", "pos_embed 37x37->32x32 (bicubic)"); ``ignored``: file keys that
    are expected to be unused (mask_token, depth_head.*, text.*, rotary buffers, ...).
    """

    layout: str = ""
    path: str = ""
    loaded: int = 0

    def summary(self, limit: int = 12) -> str:
        lines = [("ok: " if self.ok() else "MISMATCH: ")
                 + f"{self.path or '<state dict>'} [{self.layout}]: loaded {self.loaded} tensors"]
        if self.converted:
            lines.append("  converted: " + "; ".join(self.converted))
        if self.ignored:
            lines.append("  ignored (expected): " + ", ".join(_group_keys(self.ignored, limit)))
        if self.missing:
            lines.append(f"  MISSING ({len(self.missing)}): " + ", ".join(_group_keys(self.missing, limit)))
        if self.unexpected:
            lines.append(f"  UNEXPECTED ({len(self.unexpected)}): " + ", ".join(_group_keys(self.unexpected, limit)))
        return "\n".join(lines)


def _group_keys(keys: list[str], max_items: int = 12) -> list[str]:
    """Compact listing: block indices folded ('visual.blocks.*.attn.rope.freqs_cos (24 keys)')."""

    def fold(patterns: list[str]) -> dict[str, int]:
        groups: dict[str, int] = {}
        for k in patterns:
            groups[k] = groups.get(k, 0) + 1
        return groups

    groups = fold([re.sub(r"\.\d+(?=\.|$)", ".*", k) for k in keys])
    if len(groups) > max_items:  # coarser: first two name segments
        groups = fold([".".join(k.split(".")[:2]) + (".*" if k.count(".") > 1 else "") for k in keys])
    out = [g if n == 1 else f"{g} ({n} keys)" for g, n in groups.items()]
    if len(out) > max_items:
        out = out[:max_items] + [f"... ({len(out) - max_items} more groups)"]
    return out


class CheckpointShapeError(ValueError):
    """A tensor of the weight file does not fit the backbone built from the config."""


# --------------------------------------------------------------------------------------- reading
def weights_path(cfg: "ViTConfig", weights_dir: str | Path | None) -> Path:
    """``weights_dir / cfg.weights_file``; :class:`methods.weights.MissingWeightsError` (a
    FileNotFoundError naming the folder, the file and where to get it) when it is not there."""
    if not cfg.weights_file:
        raise ValueError(f"ViTConfig(family={cfg.family!r}) names no weights_file")
    path = locate(weights_dir, cfg.weights_file)
    if path is None:
        raise MissingWeightsError(cfg.weights_file, weights_dir)
    return path


def detect_layout(sd: Mapping[str, object]) -> str:
    """Which official layout a state dict has (one of :data:`LAYOUTS`)."""
    keys = set(sd)
    if "visual.conv1.weight" in keys or "visual.class_embedding" in keys:
        return "openai_clip"
    if "visual.pos_embed" in keys or "visual.blocks.0.attn.q_proj.weight" in keys or (
        "blocks.0.attn.q_proj.weight" in keys and "blocks.0.mlp.w3.weight" in keys
    ):
        return "eva_clip"
    if any(k.startswith(("pretrained.", "pipeline.pretrained.")) for k in keys):
        return "depth_anything_v2"
    if "vit.cls_token" in keys or "vit.patch_embed.proj.weight" in keys:
        return "backbone"
    if "cls_token" in keys and "patch_embed.proj.weight" in keys:
        return "dinov2"
    sample = sorted(keys)[:8]
    raise ValueError(
        f"unrecognised checkpoint layout (first keys: {sample}). Expected one of: DINOv2 (cls_token, "
        "pos_embed, blocks.N.*), Depth-Anything-V2 (pretrained.*, depth_head.*), EVA-CLIP (visual.pos_embed, "
        "visual.blocks.N.attn.q_proj.*), OpenAI CLIP (visual.conv1.weight, visual.transformer.resblocks.N.*) "
        "or a ViTBackbone state dict (vit.*)"
    )


# ------------------------------------------------------------------------------------ key mapping
_EVA_BLOCK_RENAMES = (
    ("attn.q_bias", "attn.q_proj.bias"),
    ("attn.v_bias", "attn.v_proj.bias"),
    ("attn.inner_attn_ln.", "attn.norm."),
    ("mlp.ffn_ln.", "mlp.norm."),
    ("mlp.w1.", "mlp.fc1_g."),
    ("mlp.w2.", "mlp.fc1_x."),
    ("mlp.w3.", "mlp.fc2."),
)
_CLIP_BLOCK_RENAMES = (
    ("ln_1.", "norm1."),
    ("ln_2.", "norm2."),
    ("attn.in_proj_weight", "attn.qkv.weight"),
    ("attn.in_proj_bias", "attn.qkv.bias"),
    ("attn.out_proj.", "attn.proj."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("ls_1.gamma", "ls1.gamma"),
    ("ls_2.gamma", "ls2.gamma"),
)


def to_backbone_keys(
    sd: Mapping[str, Tensor], layout: str, has_proj: bool
) -> tuple[dict[str, Tensor], dict[str, str], list[str]]:
    """Rename a file's tensors to :class:`ViTBackbone` keys.

    Returns (tensors by backbone key, backbone key -> original file key, ignored file keys).
    """
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    ignored: list[str] = []

    def put(new: str, value: Tensor, old: str) -> None:
        out[new] = value
        origin[new] = old

    if layout == "backbone":
        for k, v in sd.items():
            if not isinstance(v, Tensor):
                ignored.append(k)
            elif k.startswith("proj.") and not has_proj:
                ignored.append(k)
            else:
                put(k, v, k)
        return out, origin, ignored

    if layout in ("dinov2", "depth_anything_v2"):
        for k, v in sd.items():
            name = k[len("pipeline."):] if k.startswith("pipeline.") else k
            if layout == "depth_anything_v2":
                if not name.startswith("pretrained."):
                    ignored.append(k)  # depth_head.* (DPT decoder), anything else outside the encoder
                    continue
                name = name[len("pretrained."):]
            if not isinstance(v, Tensor) or name == "mask_token":
                ignored.append(k)  # masked-image-modelling token, unused for dense features
                continue
            name = re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", name)  # block-chunked FSDP layout
            put("vit." + name, v, k)
        return out, origin, ignored

    if layout == "eva_clip":
        prefix = "visual." if any(k.startswith("visual.") for k in sd) else ""
        for k, v in sd.items():
            if prefix and not k.startswith(prefix):
                ignored.append(k)  # text.*, logit_scale
                continue
            name = k[len(prefix):]
            if not isinstance(v, Tensor) or "rope." in name or name.startswith("rope"):
                ignored.append(k)  # fixed rotary tables (freqs_cos / freqs_sin), recomputed per grid
                continue
            if name.startswith("head."):
                if has_proj:
                    put("proj." + name[len("head."):], v, k)
                else:
                    ignored.append(k)  # image->text projection, unused by this config (proj_dim=None)
                continue
            for a, b in _EVA_BLOCK_RENAMES:
                name = name.replace(a, b)
            put("vit." + name, v, k)
        return out, origin, ignored

    if layout == "openai_clip":
        prefix = "visual."
        for k, v in sd.items():
            if not k.startswith(prefix) or not isinstance(v, Tensor):
                ignored.append(k)  # text tower, logit_scale, input_resolution, ...
                continue
            name = k[len(prefix):]
            if name == "proj":
                if has_proj:
                    put("proj.weight", v.t(), k)
                else:
                    ignored.append(k)
                continue
            if name == "conv1.weight":
                put("vit.patch_embed.proj.weight", v, k)
            elif name == "class_embedding":
                put("vit.cls_token", v.reshape(1, 1, -1), k)
            elif name == "positional_embedding":
                put("vit.pos_embed", v.unsqueeze(0) if v.ndim == 2 else v, k)
            elif name.startswith("ln_pre."):
                put("vit.norm_pre." + name[len("ln_pre."):], v, k)
            elif name.startswith("ln_post."):
                put("vit.norm." + name[len("ln_post."):], v, k)
            elif name.startswith("transformer.resblocks."):
                rest = name[len("transformer.resblocks."):]
                for a, b in _CLIP_BLOCK_RENAMES:
                    rest = rest.replace(a, b)
                put("vit.blocks." + rest, v, k)
            else:
                put("vit." + name, v, k)  # will surface as unexpected
        return out, origin, ignored

    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


# ------------------------------------------------------------------------------------ conversions
def resize_patch_kernel(weight: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Patch-embed kernel [D, 3, p, p] -> [D, 3, size, size].

    ``bicubic``: Rein's conversion, plain bicubic interpolation of the kernel (align_corners=False).
    ``pinv``: timm's FlexiViT pseudo-inverse resample.
    """
    if mode == "bicubic":
        w = F.interpolate(weight.float(), size=(size, size), mode="bicubic", align_corners=False)
    elif mode == "pinv":
        from timm.layers import resample_patch_embed

        w = resample_patch_embed(weight.float(), [size, size], interpolation="bicubic", antialias=True)
    else:
        raise ValueError(f"patch_resample={mode!r}: expected 'bicubic' or 'pinv'")
    return w.to(weight.dtype)


def resize_pos_embed(
    pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int = 1, mode: str = "bicubic"
) -> Tensor:
    """Absolute pos-embed [1, prefix + h*w, D]: resample the patch part from ``old_grid`` to ``new_grid``."""
    from timm.layers import resample_abs_pos_embed

    out = resample_abs_pos_embed(
        pos.float(), new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=num_prefix,
        interpolation=mode, antialias=False,
    )
    return out.to(pos.dtype)


def _square_grid(n_tokens: int, key: str) -> tuple[int, int]:
    g = int(round(math.sqrt(n_tokens)))
    if g * g != n_tokens:
        raise CheckpointShapeError(f"{key}: {n_tokens} patch positions is not a square grid; cannot resize it")
    return (g, g)


def _likely_cause(key: str, file_shape: tuple, model_shape: tuple, cfg: "ViTConfig", file_width: int | None) -> str:
    if file_width is not None and file_width != cfg.embed_dim:
        return (f"the file is a width-{file_width} model but the config has embed_dim={cfg.embed_dim}: "
                "wrong config for this file")
    if key == "vit.patch_embed.proj.weight":
        return (f"patch {file_shape[-1]} vs {model_shape[-1]}: set source_patch_size={file_shape[-1]} in the "
                "ViTConfig to convert the kernel, or use a config with the file's patch size")
    if key.startswith("proj."):
        return f"projection width differs: the file projects to {file_shape[0]}, config proj_dim={cfg.proj_dim}"
    if ".mlp." in key:
        return f"MLP width differs: check mlp_ratio={cfg.mlp_ratio} / swiglu={cfg.swiglu} against the file"
    if ".attn." in key:
        return f"attention layout differs: check num_heads={cfg.num_heads} / qkv_bias={cfg.qkv_bias}"
    return "the architecture in the ViTConfig does not match the file"


def convert_for_backbone(
    sd: Mapping[str, Tensor], backbone: "ViTBackbone", layout: str | None = None
) -> tuple[dict[str, Tensor], KeyReport]:
    """Map + convert a file's tensors to the backbone's keys, shapes and dtypes (no loading)."""
    cfg = backbone.cfg
    layout = layout or detect_layout(sd)
    fam = _LAYOUT_FAMILY.get(layout)
    if fam is not None and fam != cfg.family:
        example = {"dinov2": "dinov2_vitl14", "eva02": "eva02_clip_vitl14", "clip": "clip_vitb16"}[fam]
        raise ValueError(
            f"the checkpoint has the {layout} layout (a {fam} model) but the ViTConfig family is {cfg.family!r}: "
            f"use a {fam} config (e.g. vit_config({example!r}))"
        )
    mapped, origin, ignored = to_backbone_keys(sd, layout, has_proj=backbone.proj is not None)
    model_sd = backbone.state_dict()
    converted: list[str] = []
    file_width = None
    if "vit.cls_token" in mapped:
        file_width = int(mapped["vit.cls_token"].shape[-1])

    key = "vit.patch_embed.proj.weight"
    if key in mapped and key in model_sd:
        w = mapped[key]
        fp, mp = int(w.shape[-1]), cfg.patch_size
        if w.ndim == 4 and tuple(w.shape[:2]) == tuple(model_sd[key].shape[:2]) and fp != mp:
            if cfg.source_patch_size != fp:
                raise CheckpointShapeError(
                    f"{origin[key]} -> {key}: file shape {tuple(w.shape)}, model shape {tuple(model_sd[key].shape)}."
                    f" Likely cause: patch {fp} vs {mp}: the file has patch size {fp}, the config {mp}. Set "
                    f"source_patch_size={fp} in the ViTConfig to convert it (Rein: bicubic kernel resize "
                    f"{fp}->{mp}), or use a config with patch_size={fp}."
                )
            mapped[key] = resize_patch_kernel(w, mp, cfg.patch_resample)
            converted.append(f"patch_embed {fp}->{mp} ({cfg.patch_resample})")

    key = "vit.pos_embed"
    if key in mapped and key in model_sd:
        pe = mapped[key]
        npt = backbone.num_prefix_tokens
        if pe.ndim == 3 and pe.shape[-1] == model_sd[key].shape[-1] and pe.shape[1] > npt:
            old = _square_grid(pe.shape[1] - npt, origin[key])
            new = backbone.grid_size
            if old != tuple(new):
                mapped[key] = resize_pos_embed(pe, old, new, npt, cfg.pos_interp)
                converted.append(f"pos_embed {old[0]}x{old[1]}->{new[0]}x{new[1]} ({cfg.pos_interp})")

    casts: dict[str, int] = {}
    to_load: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for k, v in mapped.items():
        if k not in model_sd:
            unexpected.append(origin[k])
            continue
        target = model_sd[k]
        if tuple(v.shape) != tuple(target.shape):
            cause = _likely_cause(k, tuple(v.shape), tuple(target.shape), cfg, file_width)
            raise CheckpointShapeError(
                f"{origin[k]} -> {k}: file shape {tuple(v.shape)}, model shape {tuple(target.shape)}. "
                f"Likely cause: {cause}."
            )
        if v.dtype != target.dtype:
            tag = f"{str(v.dtype).replace('torch.', '')}->{str(target.dtype).replace('torch.', '')}"
            casts[tag] = casts.get(tag, 0) + 1
        to_load[k] = v.to(dtype=target.dtype).contiguous()
        if target.is_meta and to_load[k].data_ptr() == v.data_ptr():
            to_load[k] = to_load[k].clone()  # assigned as the parameter: do not keep the file mapping alive
    for tag, n in casts.items():
        converted.append(f"dtype {tag} ({n} tensors)")
    missing = [k for k in model_sd if k not in to_load]
    report = KeyReport(missing=missing, unexpected=unexpected, converted=converted, ignored=ignored,
                       layout=layout, loaded=len(to_load))
    return to_load, report


def materialize_buffers(module: nn.Module, device: str | torch.device = "cpu") -> None:
    """Give meta-device buffers real storage and recompute the fixed (non-persistent) ones."""
    for m in module.modules():
        for name, buf in list(m._buffers.items()):
            if buf is not None and buf.is_meta:
                m._buffers[name] = torch.empty_like(buf, device=device)
    for m in module.modules():
        init = getattr(m, "init_non_persistent_buffers", None)
        if callable(init) and m is not module:
            init()


def load_official(backbone: "ViTBackbone", path: str | Path, *, strict: bool = False) -> KeyReport:
    """Read ``path``, convert it for ``backbone`` and load it. Returns the :class:`KeyReport`.

    A backbone built on the meta device is materialised on the CPU from the file (``assign=True``); that
    requires the file to provide every tensor. ``strict=True`` raises when keys are missing or unexpected.
    """
    sd = read_state_dict(path)
    to_load, report = convert_for_backbone(sd, backbone)
    report.path = str(path)
    on_meta = any(p.is_meta for p in backbone.parameters())
    if strict and not report.ok():
        raise RuntimeError("weights do not match the backbone exactly:\n" + report.summary())
    if on_meta and report.missing:
        raise RuntimeError(
            "cannot materialise a meta-device backbone from a file that lacks tensors:\n" + report.summary()
        )
    backbone.load_state_dict(to_load, strict=False, assign=on_meta)
    if on_meta:
        materialize_buffers(backbone, "cpu")
    return report


# ------------------------------------------------------------------------------ synthetic files
def _reverse_eva(name: str) -> str:
    for a, b in _EVA_BLOCK_RENAMES:
        name = name.replace(b, a)
    return name


def _rope_tables(grid: int, ref_grid: int, head_dim: int) -> tuple[Tensor, Tensor]:
    """EVA-CLIP's stored rotary tables (freqs_cos, freqs_sin) [grid*grid, head_dim] (interleaved pairs)."""
    half = head_dim // 2
    inv = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))
    t = torch.arange(grid).float() / grid * ref_grid
    f = torch.outer(t, inv).repeat_interleave(2, dim=-1)  # [grid, half]
    f2 = torch.cat([f[:, None, :].expand(grid, grid, half), f[None, :, :].expand(grid, grid, half)], dim=-1)
    f2 = f2.reshape(grid * grid, head_dim)
    return f2.cos(), f2.sin()


def official_encoder_state_dict(backbone: "ViTBackbone", layout: str) -> dict[str, Tensor]:
    """The image-encoder tensors of ``backbone`` under an official file's key names (the inverse of what
    :func:`load_official` reads): DINOv2 (plus a zero ``mask_token``), Depth-Anything-V2 (``pretrained.``),
    EVA-CLIP (``visual.``, ``visual.head`` projection, stored rotary tables) or OpenAI CLIP (``visual.``,
    ``proj`` as [D, P]). The stored grid is the backbone's own (``cfg.img_size // cfg.patch_size``)."""
    if layout not in LAYOUTS or layout == "backbone":
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS[:-1]}")
    cfg = backbone.cfg
    if _LAYOUT_FAMILY[layout] != cfg.family:
        raise ValueError(f"layout {layout} is for family {_LAYOUT_FAMILY[layout]}, config family is {cfg.family}")
    fg = cfg.grid_size[0]
    sd = {k: v.detach().clone() for k, v in backbone.state_dict().items()}
    D = cfg.embed_dim
    out: dict[str, Tensor] = {}
    if layout in ("dinov2", "depth_anything_v2"):
        pre = "pretrained." if layout == "depth_anything_v2" else ""
        for k, v in sd.items():
            if k.startswith("vit."):
                out[pre + k[4:]] = v
        out[pre + "mask_token"] = torch.zeros(1, D)
        return out
    if layout == "eva_clip":
        for k, v in sd.items():
            if k.startswith("vit."):
                out["visual." + _reverse_eva(k[4:])] = v
            elif k.startswith("proj."):
                out["visual.head." + k[5:]] = v
        hd = D // cfg.num_heads
        cos, sin = _rope_tables(fg, cfg.rope_ref_grid or fg, hd)
        out["visual.rope.freqs_cos"], out["visual.rope.freqs_sin"] = cos, sin
        for i in range(cfg.depth):  # the shared rope module is registered inside every attention, too
            out[f"visual.blocks.{i}.attn.rope.freqs_cos"] = cos.clone()
            out[f"visual.blocks.{i}.attn.rope.freqs_sin"] = sin.clone()
        return out
    # openai_clip
    for k, v in sd.items():
        if k == "proj.weight":
            out["visual.proj"] = v.t().contiguous()
            continue
        if k == "proj.bias":
            continue
        name = k[4:]
        if name == "patch_embed.proj.weight":
            out["visual.conv1.weight"] = v
        elif name == "cls_token":
            out["visual.class_embedding"] = v.reshape(-1)
        elif name == "pos_embed":
            out["visual.positional_embedding"] = v[0]
        elif name.startswith("norm_pre."):
            out["visual.ln_pre." + name[len("norm_pre."):]] = v
        elif name.startswith("norm."):
            out["visual.ln_post." + name[len("norm."):]] = v
        elif name.startswith("blocks."):
            rest = name[len("blocks."):]
            for a, b in _CLIP_BLOCK_RENAMES:
                rest = rest.replace(b, a)
            out["visual.transformer.resblocks." + rest] = v
        else:
            out["visual." + name] = v
    return out


def synthetic_official_state_dict(
    cfg: "ViTConfig",
    layout: str,
    *,
    file_patch: int | None = None,
    file_grid: int | None = None,
    seed: int = 0,
    proj_dim: int | None = None,
) -> dict[str, Tensor]:
    """A random state dict in an official file layout for (a tiny version of) ``cfg``.

    For tests of the loading code: the encoder tensors come from a randomly initialised backbone of the
    config's architecture built at the *file's* patch size (``file_patch``, default ``source_patch_size``
    or ``patch_size``) and grid (``file_grid``), plus the keys the real files carry that must be ignored
    (mask_token, depth_head.*, text.*, rotary tables, ...). LayerNorm / LayerScale / biases are randomised
    too so that numerical cross-checks are meaningful.
    """
    from .vit import ViTBackbone

    if layout not in LAYOUTS or layout == "backbone":
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS[:-1]}")
    fam = _LAYOUT_FAMILY[layout]
    if fam != cfg.family:
        raise ValueError(f"layout {layout} is for family {fam}, config family is {cfg.family}")
    fp = file_patch or cfg.source_patch_size or cfg.patch_size
    fg = file_grid or cfg.grid_size[0]
    pdim = proj_dim or cfg.proj_dim or max(8, cfg.embed_dim // 2)
    src_cfg = replace(cfg, patch_size=fp, img_size=fg * fp, frozen=False, source_patch_size=None, proj_dim=pdim,
                      drop_path=0.0)
    gen = torch.Generator().manual_seed(seed)
    model = ViTBackbone(src_cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and ("norm" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * r)
            elif p.ndim == 1:
                p.copy_(0.05 * r)
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(r / math.sqrt(fan_in))
    out = official_encoder_state_dict(model, layout)
    D = cfg.embed_dim
    if layout == "depth_anything_v2":
        out["depth_head.projects.0.weight"] = torch.randn(8, D, 1, 1, generator=gen)
        out["depth_head.projects.0.bias"] = torch.zeros(8)
        out["depth_head.scratch.output_conv2.2.weight"] = torch.randn(1, 8, 1, 1, generator=gen)
    if layout in ("dinov2", "depth_anything_v2"):
        return out
    if layout == "eva_clip":
        out["text.transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(3 * 16, 16, generator=gen)
        out["text.token_embedding.weight"] = torch.randn(10, 16, generator=gen)
        out["text.text_projection"] = torch.randn(16, pdim, generator=gen)
        out["logit_scale"] = torch.tensor(4.6052)
        return out
    out["positional_embedding"] = torch.randn(16, 16, generator=gen)
    out["text_projection"] = torch.randn(16, pdim, generator=gen)
    out["token_embedding.weight"] = torch.randn(10, 16, generator=gen)
    out["ln_final.weight"] = torch.ones(16)
    out["logit_scale"] = torch.tensor(4.6052)
    return out


def write_synthetic_checkpoint(path: str | Path, cfg: "ViTConfig", layout: str, **kwargs) -> dict[str, Tensor]:
    """Save :func:`synthetic_official_state_dict` to ``path`` (torch.save) and return it."""
    sd = synthetic_official_state_dict(cfg, layout, **kwargs)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, str(path))
    return sd
