"""Checkpoint loading (methods/backbones/checkpoints.py) pinned value by value: hand-built tiny state dicts under
the official key names (written out here from the layouts in the module's docstring and methods.md), the
conversions against plain ``torch.nn.functional`` calls, the rotary tables from their definition written as
loops, and every message in full."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.backbones import CheckpointShapeError, ViTBackbone, vit_config, weights_path
from methods.backbones.checkpoints import (
    KeyReport,
    _group_keys,
    _likely_cause,
    _square_grid,
    convert_for_backbone,
    detect_layout,
    load_official,
    official_encoder_state_dict,
    resize_patch_kernel,
    resize_pos_embed,
    to_backbone_keys,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def t(i: float, *shape: int) -> torch.Tensor:
    """A small tensor recognisable by its value."""
    return torch.full(shape or (1,), float(i))


def one_block(name: str, **changes) -> ViTBackbone:
    torch.manual_seed(0)
    return ViTBackbone(vit_config(name, **{"depth": 1, "taps": (0,), **changes}))


# ------------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize("keys,layout", [
    (["visual.conv1.weight"], "openai_clip"),
    (["visual.class_embedding"], "openai_clip"),
    (["visual.conv1.weight", "visual.pos_embed"], "openai_clip"),  # OpenAI is tried first
    (["visual.pos_embed"], "eva_clip"),
    (["visual.blocks.0.attn.q_proj.weight"], "eva_clip"),
    (["blocks.0.attn.q_proj.weight", "blocks.0.mlp.w3.weight"], "eva_clip"),  # a bare EVA tower
    (["visual.pos_embed", "pretrained.cls_token"], "eva_clip"),
    (["pretrained.cls_token"], "depth_anything_v2"),
    (["pipeline.pretrained.cls_token"], "depth_anything_v2"),
    (["pretrained.cls_token", "vit.cls_token"], "depth_anything_v2"),
    (["vit.cls_token"], "backbone"),
    (["vit.patch_embed.proj.weight"], "backbone"),
    (["vit.cls_token", "cls_token", "patch_embed.proj.weight"], "backbone"),
    (["cls_token", "patch_embed.proj.weight"], "dinov2"),
    (["cls_token", "patch_embed.proj.weight", "blocks.0.attn.q_proj.weight"], "dinov2"),  # no SwiGLU w3: not EVA
    (["cls_token", "patch_embed.proj.weight", "blocks.0.mlp.w3.weight"], "dinov2"),
])
def test_detect_layout_from_the_keys(keys, layout):
    assert detect_layout({k: None for k in keys}) == layout


@pytest.mark.parametrize("keys", [["cls_token"], ["patch_embed.proj.weight"], ["depth_head.x", "text.y"]])
def test_unrecognised_layout_message(keys):
    with pytest.raises(ValueError) as e:
        detect_layout({k: None for k in keys})
    assert str(e.value).startswith(f"unrecognised checkpoint layout (first keys: {sorted(keys)}). Expected one of: ")


def test_unrecognised_layout_message_in_full():
    keys = [f"k{i}" for i in range(9, -1, -1)]
    with pytest.raises(ValueError) as e:
        detect_layout({k: None for k in keys})
    assert str(e.value) == (
        "unrecognised checkpoint layout (first keys: ['k0', 'k1', 'k2', 'k3', 'k4', 'k5', 'k6', 'k7']). Expected one "
        "of: DINOv2 (cls_token, pos_embed, blocks.N.*), Depth-Anything-V2 (pretrained.*, depth_head.*), EVA-CLIP "
        "(visual.pos_embed, visual.blocks.N.attn.q_proj.*), OpenAI CLIP (visual.conv1.weight, "
        "visual.transformer.resblocks.N.*) or a ViTBackbone state dict (vit.*)"
    )


# ----------------------------------------------------------------------------------------- key mapping
def _check_mapping(sd, layout, has_proj, expected, ignored):
    """``expected``: backbone key -> (file key, expected tensor)."""
    out, origin, ign = to_backbone_keys(sd, layout, has_proj=has_proj)
    assert list(out) == list(expected)
    for new, (old, value) in expected.items():
        assert origin[new] == old, new
        assert torch.equal(out[new], value), new
        assert out[new].shape == value.shape, new
    assert set(origin) == set(expected)
    assert ign == ignored


def test_dinov2_keys():
    sd = {"cls_token": t(1), "pos_embed": t(2), "mask_token": t(3), "blocks.0.norm1.weight": t(4),
          "blocks.1.3.attn.qkv.bias": t(5), "blocks.12.ls1.gamma": t(6), "pipeline.norm.bias": t(7), "meta": "x"}
    expected = {
        "vit.cls_token": ("cls_token", t(1)),
        "vit.pos_embed": ("pos_embed", t(2)),
        "vit.blocks.0.norm1.weight": ("blocks.0.norm1.weight", t(4)),
        "vit.blocks.3.attn.qkv.bias": ("blocks.1.3.attn.qkv.bias", t(5)),  # block-chunked: chunk 1, block 3
        "vit.blocks.12.ls1.gamma": ("blocks.12.ls1.gamma", t(6)),
        "vit.norm.bias": ("pipeline.norm.bias", t(7)),
    }
    _check_mapping(sd, "dinov2", False, expected, ["mask_token", "meta"])


def test_depth_anything_v2_keys():
    sd = {"pretrained.cls_token": t(1), "pretrained.mask_token": t(2), "depth_head.projects.0.weight": t(3),
          "pipeline.pretrained.blocks.0.ls1.gamma": t(4), "pipeline.depth_head.scratch.x": t(5),
          "pretrained.blocks.0.1.mlp.fc1.weight": t(6), "pretrained_blocks": t(7)}
    expected = {
        "vit.cls_token": ("pretrained.cls_token", t(1)),
        "vit.blocks.0.ls1.gamma": ("pipeline.pretrained.blocks.0.ls1.gamma", t(4)),
        "vit.blocks.1.mlp.fc1.weight": ("pretrained.blocks.0.1.mlp.fc1.weight", t(6)),
    }
    _check_mapping(sd, "depth_anything_v2", False, expected,
                   ["pretrained.mask_token", "depth_head.projects.0.weight", "pipeline.depth_head.scratch.x",
                    "pretrained_blocks"])


EVA_FILE = {
    "visual.cls_token": t(1), "visual.pos_embed": t(2), "visual.rope.freqs_cos": t(3),
    "visual.blocks.0.attn.rope.freqs_sin": t(4), "visual.blocks.0.attn.q_bias": t(5), "visual.blocks.0.attn.v_bias": t(6),
    "visual.blocks.0.attn.q_proj.weight": t(7), "visual.blocks.0.attn.k_proj.weight": t(8),
    "visual.blocks.0.attn.inner_attn_ln.weight": t(9), "visual.blocks.0.mlp.ffn_ln.bias": t(10),
    "visual.blocks.0.mlp.w1.weight": t(11), "visual.blocks.0.mlp.w2.bias": t(12), "visual.blocks.0.mlp.w3.weight": t(13),
    "visual.head.weight": t(14), "visual.head.bias": t(15), "text.token_embedding.weight": t(16), "logit_scale": t(17),
    "visual.note": "x",
}
EVA_TOWER = {
    "vit.cls_token": ("visual.cls_token", t(1)),
    "vit.pos_embed": ("visual.pos_embed", t(2)),
    "vit.blocks.0.attn.q_proj.bias": ("visual.blocks.0.attn.q_bias", t(5)),
    "vit.blocks.0.attn.v_proj.bias": ("visual.blocks.0.attn.v_bias", t(6)),
    "vit.blocks.0.attn.q_proj.weight": ("visual.blocks.0.attn.q_proj.weight", t(7)),
    "vit.blocks.0.attn.k_proj.weight": ("visual.blocks.0.attn.k_proj.weight", t(8)),
    "vit.blocks.0.attn.norm.weight": ("visual.blocks.0.attn.inner_attn_ln.weight", t(9)),
    "vit.blocks.0.mlp.norm.bias": ("visual.blocks.0.mlp.ffn_ln.bias", t(10)),
    "vit.blocks.0.mlp.fc1_g.weight": ("visual.blocks.0.mlp.w1.weight", t(11)),
    "vit.blocks.0.mlp.fc1_x.bias": ("visual.blocks.0.mlp.w2.bias", t(12)),
    "vit.blocks.0.mlp.fc2.weight": ("visual.blocks.0.mlp.w3.weight", t(13)),
}
EVA_IGNORED = ["visual.rope.freqs_cos", "visual.blocks.0.attn.rope.freqs_sin"]


def test_eva_clip_keys_with_projection():
    expected = dict(EVA_TOWER)
    i = list(expected).index("vit.blocks.0.mlp.fc2.weight") + 1
    items = list(expected.items())
    items[i:i] = [("proj.weight", ("visual.head.weight", t(14))), ("proj.bias", ("visual.head.bias", t(15)))]
    _check_mapping(EVA_FILE, "eva_clip", True, dict(items),
                   EVA_IGNORED + ["text.token_embedding.weight", "logit_scale", "visual.note"])


def test_eva_clip_keys_without_projection():
    _check_mapping(EVA_FILE, "eva_clip", False, EVA_TOWER,
                   EVA_IGNORED + ["visual.head.weight", "visual.head.bias", "text.token_embedding.weight",
                                  "logit_scale", "visual.note"])


def test_eva_tower_without_visual_prefix():
    sd = {"cls_token": t(1), "rope.freqs_cos": t(2), "rope": t(3), "blocks.0.attn.q_bias": t(4),
          "blocks.0.mlp.w3.weight": t(5), "head.weight": t(6), "logit_scale": t(7), "epoch": 3}
    expected = {
        "vit.cls_token": ("cls_token", t(1)),
        "vit.blocks.0.attn.q_proj.bias": ("blocks.0.attn.q_bias", t(4)),
        "vit.blocks.0.mlp.fc2.weight": ("blocks.0.mlp.w3.weight", t(5)),
        "proj.weight": ("head.weight", t(6)),
        "vit.logit_scale": ("logit_scale", t(7)),  # no prefix to tell the towers apart: surfaces as unexpected
    }
    _check_mapping(sd, "eva_clip", True, expected, ["rope.freqs_cos", "rope", "epoch"])


def test_openai_clip_keys():
    proj = torch.arange(12.0).reshape(4, 3)  # [width, joint]
    sd = {
        "visual.conv1.weight": t(1, 4, 3, 2, 2), "visual.class_embedding": torch.arange(4.0),
        "visual.positional_embedding": t(3, 5, 4), "visual.ln_pre.weight": t(4), "visual.ln_post.bias": t(5),
        "visual.transformer.resblocks.0.ln_1.weight": t(6), "visual.transformer.resblocks.0.ln_2.bias": t(7),
        "visual.transformer.resblocks.0.attn.in_proj_weight": t(8), "visual.transformer.resblocks.0.attn.in_proj_bias": t(9),
        "visual.transformer.resblocks.0.attn.out_proj.weight": t(10), "visual.transformer.resblocks.1.mlp.c_fc.weight": t(11),
        "visual.transformer.resblocks.1.mlp.c_proj.bias": t(12), "visual.transformer.resblocks.1.ls_1.gamma": t(13),
        "visual.transformer.resblocks.1.ls_2.gamma": t(14), "visual.proj": proj, "visual.extra": t(15),
        "transformer.resblocks.0.ln_1.weight": t(16), "logit_scale": t(17), "visual.input_resolution": 224,
    }
    tower = {
        "vit.patch_embed.proj.weight": ("visual.conv1.weight", t(1, 4, 3, 2, 2)),
        "vit.cls_token": ("visual.class_embedding", torch.arange(4.0).reshape(1, 1, 4)),
        "vit.pos_embed": ("visual.positional_embedding", t(3, 1, 5, 4)),
        "vit.norm_pre.weight": ("visual.ln_pre.weight", t(4)),
        "vit.norm.bias": ("visual.ln_post.bias", t(5)),
        "vit.blocks.0.norm1.weight": ("visual.transformer.resblocks.0.ln_1.weight", t(6)),
        "vit.blocks.0.norm2.bias": ("visual.transformer.resblocks.0.ln_2.bias", t(7)),
        "vit.blocks.0.attn.qkv.weight": ("visual.transformer.resblocks.0.attn.in_proj_weight", t(8)),
        "vit.blocks.0.attn.qkv.bias": ("visual.transformer.resblocks.0.attn.in_proj_bias", t(9)),
        "vit.blocks.0.attn.proj.weight": ("visual.transformer.resblocks.0.attn.out_proj.weight", t(10)),
        "vit.blocks.1.mlp.fc1.weight": ("visual.transformer.resblocks.1.mlp.c_fc.weight", t(11)),
        "vit.blocks.1.mlp.fc2.bias": ("visual.transformer.resblocks.1.mlp.c_proj.bias", t(12)),
        "vit.blocks.1.ls1.gamma": ("visual.transformer.resblocks.1.ls_1.gamma", t(13)),
        "vit.blocks.1.ls2.gamma": ("visual.transformer.resblocks.1.ls_2.gamma", t(14)),
    }
    other = {"vit.extra": ("visual.extra", t(15))}
    rest = ["transformer.resblocks.0.ln_1.weight", "logit_scale", "visual.input_resolution"]
    with_proj = {**tower, "proj.weight": ("visual.proj", proj.t()), **other}
    _check_mapping(sd, "openai_clip", True, with_proj, rest)
    _check_mapping(sd, "openai_clip", False, {**tower, **other}, ["visual.proj"] + rest)
    # a 3-D positional embedding ([1, N, D], open_clip) is kept as it is
    out, _, _ = to_backbone_keys({"visual.positional_embedding": t(3, 1, 5, 4)}, "openai_clip", has_proj=False)
    assert out["vit.pos_embed"].shape == (1, 5, 4)


def test_backbone_keys_and_unknown_layout():
    sd = {"vit.cls_token": t(1), "proj.weight": t(2), "proj.bias": t(3), "projection.x": t(4), "step": 7}
    _check_mapping(sd, "backbone", True, {"vit.cls_token": ("vit.cls_token", t(1)), "proj.weight": ("proj.weight", t(2)),
                                          "proj.bias": ("proj.bias", t(3)), "projection.x": ("projection.x", t(4))},
                   ["step"])
    _check_mapping(sd, "backbone", False, {"vit.cls_token": ("vit.cls_token", t(1)),
                                           "projection.x": ("projection.x", t(4))},
                   ["proj.weight", "proj.bias", "step"])
    with pytest.raises(ValueError) as e:
        to_backbone_keys(sd, "timm", has_proj=False)
    assert str(e.value) == ("unknown layout 'timm'; expected one of ('dinov2', 'depth_anything_v2', 'eva_clip', "
                            "'openai_clip', 'backbone')")


# ----------------------------------------------------------------------------------------- conversions
def test_bicubic_kernel_resize_is_plain_interpolate():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    out = resize_patch_kernel(w, 5)
    ref = F.interpolate(w.float(), size=(5, 5), mode="bicubic", align_corners=False).double()
    assert out.dtype == torch.float64 and torch.equal(out, ref)  # computed in float32, returned in the file's dtype
    down = resize_patch_kernel(w.float(), 2, "bicubic")
    assert torch.equal(down, F.interpolate(w.float(), size=(2, 2), mode="bicubic", align_corners=False))


def test_pinv_kernel_resize_keeps_token_values():
    """FlexiViT's pseudo-inverse resample: for an upsampled kernel, <resize(x), new kernel> = <x, old kernel> for
    every patch x, with resize = bicubic interpolation with antialiasing (as timm resizes the patches)."""
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    new = resize_patch_kernel(w, 5, "pinv")
    assert new.dtype == torch.float64 and new.shape == (4, 3, 5, 5)
    x = torch.randn(6, 3, 3, 3)
    x5 = F.interpolate(x, size=(5, 5), mode="bicubic", align_corners=False, antialias=True)
    tokens = torch.einsum("nchw,dchw->nd", x.double(), w)
    torch.testing.assert_close(torch.einsum("nchw,dchw->nd", x5.double(), new), tokens, atol=1e-4, rtol=1e-4)


def test_unknown_kernel_resample_message():
    with pytest.raises(ValueError) as e:
        resize_patch_kernel(torch.zeros(1, 3, 2, 2), 4, "nearest")
    assert str(e.value) == "patch_resample='nearest': expected 'bicubic' or 'pinv'"


def _pos_reference(pos, old, new, prefix, mode):
    d = pos.shape[-1]
    grid = pos[:, prefix:].float().reshape(1, old[0], old[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new, mode=mode, align_corners=False, antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], d)
    return torch.cat([pos[:, :prefix].float(), grid], 1).to(pos.dtype)


@pytest.mark.parametrize("old,new,prefix,mode", [
    ((2, 3), (4, 5), 2, "bicubic"),  # non-square both ways, two prefix tokens
    ((4, 4), (2, 3), 1, "bicubic"),  # downsampling: no antialiasing
    ((3, 2), (5, 4), 1, "bilinear"),
    ((2, 2), (3, 3), 0, "bicubic"),
])
def test_pos_embed_resize_is_plain_interpolate(old, new, prefix, mode):
    torch.manual_seed(0)
    pos = torch.randn(1, prefix + old[0] * old[1], 6, dtype=torch.float64)
    out = resize_pos_embed(pos, old, new, prefix, mode)
    assert out.dtype == torch.float64 and out.shape == (1, prefix + new[0] * new[1], 6)
    torch.testing.assert_close(out, _pos_reference(pos, old, new, prefix, mode), rtol=0, atol=1e-12)


def test_pos_embed_resize_defaults():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 9, 4)
    torch.testing.assert_close(resize_pos_embed(pos, (3, 3), (4, 4)), _pos_reference(pos, (3, 3), (4, 4), 1, "bicubic"),
                               rtol=0, atol=1e-6)


def test_square_grid():
    assert _square_grid(1, "k") == (1, 1) and _square_grid(16, "k") == (4, 4) and _square_grid(1369, "k") == (37, 37)
    for n in (15, 17, 2):
        with pytest.raises(CheckpointShapeError) as e:
            _square_grid(n, "visual.pos_embed")
        assert str(e.value) == f"visual.pos_embed: {n} patch positions is not a square grid; cannot resize it"


def test_likely_causes_in_full():
    cfg = vit_config("dinov2_tiny", proj_dim=24)
    assert _likely_cause("vit.blocks.0.mlp.fc1.weight", (8,), (9,), cfg, 96) == (
        "the file is a width-96 model but the config has embed_dim=64: wrong config for this file")
    assert _likely_cause("vit.patch_embed.proj.weight", (64, 3, 14, 14), (64, 3, 16, 16), cfg, 64) == (
        "patch 14 vs 16: set source_patch_size=14 in the ViTConfig to convert the kernel, or use a config with the "
        "file's patch size")
    assert _likely_cause("vit.patch_embed.proj.weight", (64, 3, 14, 14), (64, 3, 16, 16), cfg, None).startswith(
        "patch 14 vs 16")
    assert _likely_cause("proj.weight", (32, 64), (24, 64), cfg, 64) == (
        "projection width differs: the file projects to 32, config proj_dim=24")
    assert _likely_cause("vit.blocks.0.mlp.fc1.weight", (8,), (9,), cfg, 64) == (
        "MLP width differs: check mlp_ratio=4.0 / swiglu=False against the file")
    assert _likely_cause("vit.blocks.0.attn.qkv.weight", (8,), (9,), cfg, 64) == (
        "attention layout differs: check num_heads=2 / qkv_bias=True")
    assert _likely_cause("vit.norm.weight", (8,), (9,), cfg, 64) == (
        "the architecture in the ViTConfig does not match the file")


# ------------------------------------------------------------------------------------------- reports
def test_key_report_summary_in_full():
    rep = KeyReport(missing=["vit.blocks.0.a", "vit.blocks.1.a"], unexpected=["x", "y"], converted=["c1", "c2"],
                    ignored=["mask_token", "text.y"], layout="dinov2", loaded=3)
    assert rep.summary() == (
        "MISMATCH: <state dict> [dinov2]: loaded 3 tensors\n"
        "  converted: c1; c2\n"
        "  ignored (expected): mask_token, text.y\n"
        "  MISSING (2): vit.blocks.*.a (2 keys)\n"
        "  UNEXPECTED (2): x, y"
    )
    assert KeyReport(layout="eva_clip", path="/w/e.pt").summary() == "ok: /w/e.pt [eva_clip]: loaded 0 tensors"
    many = KeyReport(missing=["a.b", "c.d", "e.f"], unexpected=["g.h.i", "g.h.j"], ignored=["k", "l"])
    assert many.summary(limit=1) == (
        "MISMATCH: <state dict> []: loaded 0 tensors\n"
        "  ignored (expected): k, ... (1 more groups)\n"
        "  MISSING (3): a.b, ... (2 more groups)\n"
        "  UNEXPECTED (2): g.h.* (2 keys)"
    )
    # the default limit is 12 groups
    keys = [f"n{i}" for i in range(13)]
    assert KeyReport(missing=keys).summary().endswith("n11, ... (1 more groups)")
    assert KeyReport(missing=keys[:12]).summary().endswith("n10, n11")


def test_group_keys():
    assert _group_keys(["blocks.0.a", "blocks.1.a", "blocks.10.b.3", "norm"]) == [
        "blocks.*.a (2 keys)", "blocks.*.b.*", "norm"]
    assert _group_keys(["a.1", "b.2"], 2) == ["a.*", "b.*"]  # as many groups as allowed: not coarsened
    # too many groups: first two name segments, then cut
    assert _group_keys(["a.b.c", "a.b.d", "x.y", "z"], 3) == ["a.b.* (2 keys)", "x.y", "z"]
    assert _group_keys(["a.b.c", "a.b.d", "x.y", "z"], 2) == ["a.b.* (2 keys)", "x.y", "... (1 more groups)"]
    assert _group_keys([f"k{i}" for i in range(13)]) == [f"k{i}" for i in range(12)] + ["... (1 more groups)"]
    assert _group_keys([f"k{i}" for i in range(12)]) == [f"k{i}" for i in range(12)]


def test_weights_path_without_a_file_name(tmp_path):
    with pytest.raises(ValueError) as e:
        weights_path(vit_config("dinov2_tiny", weights_file=None), tmp_path)
    assert str(e.value) == "ViTConfig(family='dinov2') names no weights_file"


# ------------------------------------------------------------------------------------ convert and load
def _dinov2_file(backbone: ViTBackbone) -> dict[str, torch.Tensor]:
    """The backbone's own tensors under DINOv2's names (no ``vit.`` prefix), as independent copies."""
    return {k[len("vit."):]: v.detach().clone() for k, v in backbone.state_dict().items()}


DINOV2_ONE_BLOCK = [
    "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "blocks.0.norm1.weight",
    "blocks.0.norm1.bias", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight",
    "blocks.0.attn.proj.bias", "blocks.0.ls1.gamma", "blocks.0.norm2.weight", "blocks.0.norm2.bias",
    "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc1.bias", "blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.bias",
    "blocks.0.ls2.gamma", "norm.weight", "norm.bias",
]


def test_convert_counts_casts_and_reports():
    b = one_block("dinov2_tiny", source_patch_size=None)
    sd = _dinov2_file(b)
    assert list(sd) == DINOV2_ONE_BLOCK
    sd = {k: (v.half() if k.startswith("blocks.") else v.bfloat16() if k.startswith("norm") else v)
          for k, v in sd.items()}
    del sd["norm.bias"]
    sd["blocks.1.norm1.weight"] = t(1, 64)
    to_load, rep = convert_for_backbone(sd, b)
    assert rep.layout == "dinov2" and rep.loaded == 19 and rep.path == ""
    assert rep.converted == ["dtype float16->float32 (14 tensors)", "dtype bfloat16->float32 (1 tensors)"]
    assert rep.missing == ["vit.norm.bias"] and rep.unexpected == ["blocks.1.norm1.weight"] and rep.ignored == []
    assert set(to_load) == {"vit." + k for k in DINOV2_ONE_BLOCK[:-1]}
    for k in DINOV2_ONE_BLOCK[:-1]:
        assert to_load["vit." + k].dtype == torch.float32 and torch.equal(to_load["vit." + k], sd[k].float()), k
        assert to_load["vit." + k].is_contiguous()
    # a real backbone takes the file's float32 tensors as they are (no copy); a meta one gets its own copies
    assert to_load["vit.pos_embed"].data_ptr() == sd["pos_embed"].data_ptr()
    with torch.device("meta"):
        lazy = ViTBackbone(vit_config("dinov2_tiny", depth=1, taps=(0,), source_patch_size=None))
    to_load, _ = convert_for_backbone(sd, lazy, "dinov2")
    assert to_load["vit.pos_embed"].data_ptr() != sd["pos_embed"].data_ptr()
    assert torch.equal(to_load["vit.pos_embed"], sd["pos_embed"])
    assert to_load["vit.norm.weight"].data_ptr() != sd["norm.weight"].data_ptr()  # cast: a new tensor anyway


def test_convert_patch_and_grid_conversions():
    b = one_block("dinov2_tiny")  # patch 16, 4x4 grid, source_patch_size 14
    sd = _dinov2_file(one_block("dinov2_tiny", patch_size=14, img_size=70, source_patch_size=None))  # 5x5 @ 14
    to_load, rep = convert_for_backbone(sd, b)
    assert rep.converted == ["patch_embed 14->16 (bicubic)", "pos_embed 5x5->4x4 (bicubic)"]
    kernel = F.interpolate(sd["patch_embed.proj.weight"], size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.equal(to_load["vit.patch_embed.proj.weight"], kernel)
    torch.testing.assert_close(to_load["vit.pos_embed"], _pos_reference(sd["pos_embed"], (5, 5), (4, 4), 1, "bicubic"),
                               rtol=0, atol=1e-6)
    # the kernel resample the config names reaches the conversion (timm's FlexiViT resample, called directly)
    from timm.layers import resample_patch_embed

    to_load, rep = convert_for_backbone(sd, one_block("dinov2_tiny", patch_resample="pinv"))
    assert rep.converted[0] == "patch_embed 14->16 (pinv)"
    torch.testing.assert_close(to_load["vit.patch_embed.proj.weight"],
                               resample_patch_embed(sd["patch_embed.proj.weight"], [16, 16]), rtol=0, atol=1e-6)
    # same patch, other grid: only the pos-embed
    sd = _dinov2_file(one_block("dinov2_tiny", img_size=48, source_patch_size=None))  # 3x3 @ 16
    to_load, rep = convert_for_backbone(sd, one_block("dinov2_tiny", pos_interp="bilinear"))
    assert rep.converted == ["pos_embed 3x3->4x4 (bilinear)"]
    torch.testing.assert_close(to_load["vit.pos_embed"],
                               _pos_reference(sd["pos_embed"], (3, 3), (4, 4), 1, "bilinear"), rtol=0, atol=1e-6)


def test_convert_patch_mismatch_message_in_full():
    sd = _dinov2_file(one_block("dinov2_tiny", patch_size=14, img_size=56, source_patch_size=None))
    for source in (None, 12):
        with pytest.raises(CheckpointShapeError) as e:
            convert_for_backbone(sd, one_block("dinov2_tiny", source_patch_size=source))
        assert str(e.value) == (
            "patch_embed.proj.weight -> vit.patch_embed.proj.weight: file shape (64, 3, 14, 14), model shape "
            "(64, 3, 16, 16). Likely cause: patch 14 vs 16: the file has patch size 14, the config 16. Set "
            "source_patch_size=14 in the ViTConfig to convert it (Rein: bicubic kernel resize 14->16), or use a "
            "config with patch_size=14."
        )


def test_convert_shape_errors_in_full():
    b = one_block("dinov2_tiny")
    sd = _dinov2_file(b)
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(128, 64)
    with pytest.raises(CheckpointShapeError) as e:
        convert_for_backbone(sd, b)
    assert str(e.value) == (
        "blocks.0.mlp.fc1.weight -> vit.blocks.0.mlp.fc1.weight: file shape (128, 64), model shape (256, 64). "
        "Likely cause: MLP width differs: check mlp_ratio=4.0 / swiglu=False against the file.")
    del sd["cls_token"]  # no cls token to read the file's width from: the cause comes from the key
    with pytest.raises(CheckpointShapeError) as e:
        convert_for_backbone(sd, b, "dinov2")
    assert str(e.value).endswith("Likely cause: MLP width differs: check mlp_ratio=4.0 / swiglu=False against the file.")
    sd = _dinov2_file(b)
    sd["pos_embed"] = torch.zeros(1, 1 + 15, 64)
    with pytest.raises(CheckpointShapeError) as e:
        convert_for_backbone(sd, b)
    assert str(e.value) == "pos_embed: 15 patch positions is not a square grid; cannot resize it"
    # a pos-embed of another width is not resized but reported as the width mismatch it is
    wide = _dinov2_file(one_block("dinov2_tiny", embed_dim=96, num_heads=2))
    with pytest.raises(CheckpointShapeError) as e:
        convert_for_backbone({"pos_embed": wide["pos_embed"], "patch_embed.proj.weight": wide["patch_embed.proj.weight"],
                              "cls_token": wide["cls_token"]}, b)
    assert str(e.value) == ("pos_embed -> vit.pos_embed: file shape (1, 17, 96), model shape (1, 17, 64). Likely "
                            "cause: the file is a width-96 model but the config has embed_dim=64: wrong config for "
                            "this file.")
    # a pos-embed with the prefix token only is not a grid to resize
    with pytest.raises(CheckpointShapeError, match=r"pos_embed -> vit.pos_embed: file shape \(1, 1, 64\)"):
        convert_for_backbone({"pos_embed": torch.zeros(1, 1, 64), "cls_token": torch.zeros(1, 1, 64)}, b, "dinov2")


@pytest.mark.parametrize("layout,config,fam,example", [
    ("dinov2", "clip_tiny", "dinov2", "dinov2_vitl14"),
    ("depth_anything_v2", "eva02_tiny", "dinov2", "dinov2_vitl14"),
    ("eva_clip", "dinov2_tiny", "eva02", "eva02_clip_vitl14"),
    ("openai_clip", "eva02_tiny", "clip", "clip_vitb16"),
])
def test_family_mismatch_message_in_full(layout, config, fam, example):
    b = one_block(config)
    with pytest.raises(ValueError) as e:
        convert_for_backbone({"cls_token": t(1)}, b, layout)
    assert str(e.value) == (
        f"the checkpoint has the {layout} layout (a {fam} model) but the ViTConfig family is {b.cfg.family!r}: "
        f"use a {fam} config (e.g. vit_config({example!r}))")


def test_backbone_layout_loads_into_any_family():
    b = one_block("clip_tiny")
    sd = {k: v.detach().clone() for k, v in b.state_dict().items()}
    assert detect_layout(sd) == "backbone"
    to_load, rep = convert_for_backbone(sd, b)
    assert rep.ok() and rep.layout == "backbone" and rep.loaded == len(b.state_dict()) and rep.converted == []


def test_load_official_reports_path_and_refuses_partial_files(tmp_path):
    src = one_block("dinov2_tiny", source_patch_size=None)
    sd = _dinov2_file(src)
    del sd["norm.bias"]
    path = tmp_path / "d.pth"
    torch.save(sd, path)
    b = one_block("dinov2_tiny", source_patch_size=None)
    before = b.vit.norm.bias.detach().clone()
    rep = load_official(b, path)  # not strict by default: loads what is there, reports the rest
    assert rep.path == str(path) and rep.missing == ["vit.norm.bias"] and rep.loaded == 19
    assert torch.equal(b.vit.norm.weight, sd["norm.weight"]) and torch.equal(b.vit.norm.bias, before)
    with pytest.raises(RuntimeError) as e:
        load_official(one_block("dinov2_tiny", source_patch_size=None), path, strict=True)
    assert str(e.value) == ("weights do not match the backbone exactly:\n"
                            f"MISMATCH: {path} [dinov2]: loaded 19 tensors\n  MISSING (1): vit.norm.bias")
    with torch.device("meta"):
        lazy = ViTBackbone(vit_config("dinov2_tiny", depth=1, taps=(0,), source_patch_size=None))
    with pytest.raises(RuntimeError) as e:
        load_official(lazy, path)
    assert str(e.value) == ("cannot materialise a meta-device backbone from a file that lacks tensors:\n"
                            f"MISMATCH: {path} [dinov2]: loaded 19 tensors\n  MISSING (1): vit.norm.bias")
    torch.save(_dinov2_file(src), path)  # a complete file: strict passes, the meta module is materialised
    assert load_official(lazy, path, strict=True).ok()
    assert torch.equal(lazy.vit.norm.bias, src.vit.norm.bias) and not lazy.vit.norm.bias.is_meta


# ------------------------------------------------------------------------------ writing official files
def _rope_by_definition(grid: int, ref_grid: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA-CLIP's stored 2-D rotary table [grid*grid, head_dim], one entry at a time: the first half of a row
    rotates with the patch row, the second half with the column; pairs of channels share a frequency
    10000 ** (-2j / half); positions are scaled to the pretraining grid (t = i / grid * ref_grid)."""
    half = head_dim // 2
    cos = torch.zeros(grid * grid, head_dim)
    sin = torch.zeros(grid * grid, head_dim)
    for r in range(grid):
        for c in range(grid):
            for ch in range(head_dim):
                pos = r if ch < half else c
                j = (ch % half) // 2
                angle = (pos / grid * ref_grid) * 10000.0 ** (-2 * j / half)
                cos[r * grid + c, ch] = math.cos(angle)
                sin[r * grid + c, ch] = math.sin(angle)
    return cos, sin


def _eva_names(i: int) -> list[str]:
    p = f"visual.blocks.{i}."
    return [p + "norm1.weight", p + "norm1.bias", p + "attn.q_proj.weight", p + "attn.q_bias",
            p + "attn.k_proj.weight", p + "attn.v_proj.weight", p + "attn.v_bias", p + "attn.inner_attn_ln.weight",
            p + "attn.inner_attn_ln.bias", p + "attn.proj.weight", p + "attn.proj.bias", p + "norm2.weight",
            p + "norm2.bias", p + "mlp.w1.weight", p + "mlp.w1.bias", p + "mlp.w2.weight", p + "mlp.w2.bias",
            p + "mlp.ffn_ln.weight", p + "mlp.ffn_ln.bias", p + "mlp.w3.weight", p + "mlp.w3.bias"]


@pytest.mark.parametrize("layout,prefix", [("dinov2", ""), ("depth_anything_v2", "pretrained.")])
def test_official_dinov2_names(layout, prefix):
    b = one_block("dinov2_tiny")
    out = official_encoder_state_dict(b, layout)
    assert list(out) == [prefix + k for k in DINOV2_ONE_BLOCK] + [prefix + "mask_token"]
    own = b.state_dict()
    for k in DINOV2_ONE_BLOCK:
        assert torch.equal(out[prefix + k], own["vit." + k]), k
    assert torch.equal(out[prefix + "mask_token"], torch.zeros(1, 64))
    out[prefix + "norm.weight"].add_(1.0)  # copies, not the module's parameters
    assert not torch.equal(b.vit.norm.weight, out[prefix + "norm.weight"])


@pytest.mark.parametrize("ref_grid", [None, 3])
def test_official_eva_clip_names_and_rope_tables(ref_grid):
    b = one_block("eva02_tiny", rope_ref_grid=ref_grid, depth=2, taps=(0, 1))
    out = official_encoder_state_dict(b, "eva_clip")
    names = ["visual.cls_token", "visual.pos_embed", "visual.patch_embed.proj.weight", "visual.patch_embed.proj.bias",
             *_eva_names(0), *_eva_names(1), "visual.norm.weight", "visual.norm.bias", "visual.head.weight",
             "visual.head.bias", "visual.rope.freqs_cos", "visual.rope.freqs_sin"]
    names += [f"visual.blocks.{i}.attn.rope.freqs_{f}" for i in range(2) for f in ("cos", "sin")]
    assert list(out) == names
    assert torch.equal(out["visual.blocks.1.attn.q_bias"], b.vit.blocks[1].attn.q_proj.bias)
    assert torch.equal(out["visual.blocks.0.mlp.w2.weight"], b.vit.blocks[0].mlp.fc1_x.weight)
    assert torch.equal(out["visual.blocks.0.mlp.ffn_ln.bias"], b.vit.blocks[0].mlp.norm.bias)
    assert torch.equal(out["visual.head.weight"], b.proj.weight)
    cos, sin = _rope_by_definition(4, ref_grid or 4, 32)
    for k in ("visual.rope.freqs_", "visual.blocks.0.attn.rope.freqs_", "visual.blocks.1.attn.rope.freqs_"):
        torch.testing.assert_close(out[k + "cos"], cos, atol=1e-6, rtol=0)
        torch.testing.assert_close(out[k + "sin"], sin, atol=1e-6, rtol=0)
    # and the file reads back into an identical backbone
    fresh = one_block("eva02_tiny", rope_ref_grid=ref_grid, depth=2, taps=(0, 1))
    to_load, rep = convert_for_backbone(out, fresh)
    assert rep.ok() and sorted(rep.ignored) == sorted(names[-6:])
    assert all(torch.equal(to_load[k], v) for k, v in b.state_dict().items())


def test_official_openai_clip_names():
    b = one_block("clip_tiny", proj_bias=True)
    out = official_encoder_state_dict(b, "openai_clip")
    r = "visual.transformer.resblocks.0."
    assert list(out) == [
        "visual.class_embedding", "visual.positional_embedding", "visual.conv1.weight", "visual.ln_pre.weight",
        "visual.ln_pre.bias", r + "ln_1.weight", r + "ln_1.bias", r + "attn.in_proj_weight", r + "attn.in_proj_bias",
        r + "attn.out_proj.weight", r + "attn.out_proj.bias", r + "ln_2.weight", r + "ln_2.bias", r + "mlp.c_fc.weight",
        r + "mlp.c_fc.bias", r + "mlp.c_proj.weight", r + "mlp.c_proj.bias", "visual.ln_post.weight",
        "visual.ln_post.bias", "visual.proj",
    ]
    assert out["visual.class_embedding"].shape == (64,) and torch.equal(out["visual.class_embedding"],
                                                                       b.vit.cls_token.reshape(64))
    assert out["visual.positional_embedding"].shape == (17, 64)
    assert torch.equal(out["visual.positional_embedding"], b.vit.pos_embed[0])
    assert torch.equal(out["visual.proj"], b.proj.weight.t()) and out["visual.proj"].is_contiguous()
    own = b.state_dict()
    same = {"visual.conv1.weight": "patch_embed.proj.weight", "visual.ln_pre.weight": "norm_pre.weight",
            "visual.ln_pre.bias": "norm_pre.bias", r + "ln_1.weight": "blocks.0.norm1.weight",
            r + "ln_1.bias": "blocks.0.norm1.bias", r + "attn.in_proj_weight": "blocks.0.attn.qkv.weight",
            r + "attn.in_proj_bias": "blocks.0.attn.qkv.bias", r + "attn.out_proj.weight": "blocks.0.attn.proj.weight",
            r + "attn.out_proj.bias": "blocks.0.attn.proj.bias", r + "ln_2.weight": "blocks.0.norm2.weight",
            r + "ln_2.bias": "blocks.0.norm2.bias", r + "mlp.c_fc.weight": "blocks.0.mlp.fc1.weight",
            r + "mlp.c_fc.bias": "blocks.0.mlp.fc1.bias", r + "mlp.c_proj.weight": "blocks.0.mlp.fc2.weight",
            r + "mlp.c_proj.bias": "blocks.0.mlp.fc2.bias", "visual.ln_post.weight": "norm.weight",
            "visual.ln_post.bias": "norm.bias"}
    for official, ours in same.items():
        assert torch.equal(out[official], own["vit." + ours]), official


def test_official_names_errors_in_full():
    b = one_block("clip_tiny")
    for layout in ("backbone", "timm"):
        with pytest.raises(ValueError) as e:
            official_encoder_state_dict(b, layout)
        assert str(e.value) == (f"layout {layout!r}: expected one of ('dinov2', 'depth_anything_v2', 'eva_clip', "
                                "'openai_clip')")
    with pytest.raises(ValueError) as e:
        official_encoder_state_dict(b, "dinov2")
    assert str(e.value) == "layout dinov2 is for family dinov2, config family is clip"


def test_materialize_buffers_recomputes_the_fixed_buffers():
    from methods.backbones.checkpoints import materialize_buffers

    eager = one_block("eva02_tiny")
    with torch.device("meta"):
        lazy = ViTBackbone(vit_config("eva02_tiny", depth=1, taps=(0,)))
    materialize_buffers(lazy)  # the CPU by default
    bufs = dict(lazy.named_buffers())
    assert list(bufs) == ["vit.rope.bands"]
    for name, value in eager.named_buffers():
        assert bufs[name].device.type == "cpu" and torch.equal(bufs[name], value), name
    bn = torch.nn.BatchNorm1d(2)  # real buffers are kept, empty (None) ones skipped
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, 2.0]))
    materialize_buffers(bn)
    assert torch.equal(bn.running_mean, torch.tensor([1.0, 2.0])) and torch.equal(bn.running_var, torch.ones(2))
    plain = torch.nn.BatchNorm1d(2, track_running_stats=False)
    materialize_buffers(plain)
    assert plain.running_mean is None


def test_file_without_patch_or_position_tables_reports_them_missing():
    b = one_block("dinov2_tiny")
    sd = _dinov2_file(b)
    del sd["patch_embed.proj.weight"], sd["pos_embed"]
    to_load, rep = convert_for_backbone(sd, b, "dinov2")
    assert rep.missing == ["vit.pos_embed", "vit.patch_embed.proj.weight"] and rep.converted == [] and rep.loaded == 18


def test_patch_and_projection_causes_through_the_conversion():
    b = one_block("dinov2_tiny", source_patch_size=None)
    sd = _dinov2_file(b)
    sd["patch_embed.proj.weight"] = torch.zeros(64, 1, 14, 14)  # one input channel: not a kernel to resize
    with pytest.raises(CheckpointShapeError) as e:
        convert_for_backbone(sd, b)
    assert str(e.value) == (
        "patch_embed.proj.weight -> vit.patch_embed.proj.weight: file shape (64, 1, 14, 14), model shape "
        "(64, 3, 16, 16). Likely cause: patch 14 vs 16: set source_patch_size=14 in the ViTConfig to convert the "
        "kernel, or use a config with the file's patch size.")
    clip = one_block("clip_tiny")
    sd = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    sd["proj.weight"] = torch.zeros(24, 64)
    with pytest.raises(CheckpointShapeError) as e:
        convert_for_backbone(sd, clip)
    assert str(e.value) == ("proj.weight -> proj.weight: file shape (24, 64), model shape (32, 64). Likely cause: "
                            "projection width differs: the file projects to 24, config proj_dim=32.")
