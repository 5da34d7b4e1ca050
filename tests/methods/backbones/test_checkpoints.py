"""Loading the official weight layouts into ViTBackbone, on tiny synthetic files the tests generate."""

import pytest
import torch
import torch.nn.functional as F

from methods.backbones import (
    CheckpointShapeError,
    ViTBackbone,
    detect_layout,
    read_state_dict,
    synthetic_official_state_dict,
    vit_config,
    weights_path,
    write_synthetic_checkpoint,
)
from methods.backbones.checkpoints import to_backbone_keys


# ------------------------------------------------------------------------------------------ DINOv2
def test_dinov2_patch14_to_16_conversion(tmp_path):
    cfg = vit_config("dinov2_tiny")  # patch 16 @64 (4x4 grid), source_patch_size 14
    path = tmp_path / "dinov2_tiny_pretrain.pth"
    sd = write_synthetic_checkpoint(path, cfg, "dinov2", file_grid=5)  # like 37x37 @ patch 14
    assert sd["patch_embed.proj.weight"].shape[-1] == 14 and sd["pos_embed"].shape[1] == 1 + 25
    assert detect_layout(sd) == "dinov2"
    b = ViTBackbone(cfg)
    rep = b.load_official(path)
    assert rep.missing == [] and rep.unexpected == [] and rep.ok()
    assert rep.ignored == ["mask_token"]
    assert "patch_embed 14->16 (bicubic)" in rep.converted
    assert "pos_embed 5x5->4x4 (bicubic)" in rep.converted
    assert "patch_embed 14->16" in rep.summary() and rep.summary().startswith("ok: ")
    from methods.weights import KeyReport as ProjectKeyReport

    assert isinstance(rep, ProjectKeyReport)  # what Method.load_pretrained records
    # Rein's conversion: plain bicubic interpolation of the kernel and of the pos-embed grid
    kernel = F.interpolate(sd["patch_embed.proj.weight"], size=(16, 16), mode="bicubic", align_corners=False)
    torch.testing.assert_close(b.vit.patch_embed.proj.weight, kernel)
    grid = sd["pos_embed"][:, 1:].reshape(1, 5, 5, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(b.vit.pos_embed, torch.cat([sd["pos_embed"][:, :1], grid.reshape(1, 16, -1)], 1))
    own = b.state_dict()
    for k, v in sd.items():
        if k not in ("mask_token", "patch_embed.proj.weight", "pos_embed"):
            torch.testing.assert_close(own["vit." + k], v, msg=k)
    assert b.frozen and not any(p.requires_grad for p in b.parameters())


def test_dinov2_pinv_resample_and_native_patch(tmp_path):
    path = tmp_path / "d.pth"
    sd = write_synthetic_checkpoint(path, vit_config("dinov2_tiny"), "dinov2", file_grid=4)
    b = ViTBackbone(vit_config("dinov2_tiny", patch_resample="pinv"))
    rep = b.load_official(path)
    assert rep.ok() and rep.converted == ["patch_embed 14->16 (pinv)"]  # same 4x4 grid: pos-embed unchanged
    native = ViTBackbone(vit_config("dinov2_tiny", patch_size=14, img_size=56, source_patch_size=None))
    rep = native.load_official(path)
    assert rep.ok() and rep.converted == []  # same patch and grid: loaded unchanged
    torch.testing.assert_close(native.vit.patch_embed.proj.weight, sd["patch_embed.proj.weight"])


def test_chunked_dinov2_keys(tmp_path):
    sd = synthetic_official_state_dict(vit_config("dinov2_tiny"), "dinov2", file_grid=4)
    chunked = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // 2}.{i}." + k.split(".", 2)[2]
        chunked[k] = v
    torch.save(chunked, tmp_path / "c.pth")
    assert ViTBackbone(vit_config("dinov2_tiny")).load_official(tmp_path / "c.pth").ok()


def test_patch_size_mismatch_raises_with_cause(tmp_path):
    path = tmp_path / "d.pth"
    write_synthetic_checkpoint(path, vit_config("dinov2_tiny"), "dinov2", file_grid=4)
    b = ViTBackbone(vit_config("dinov2_tiny", source_patch_size=None))
    with pytest.raises(CheckpointShapeError) as e:
        b.load_official(path)
    msg = str(e.value)
    assert "patch_embed.proj.weight" in msg and "(64, 3, 14, 14)" in msg and "(64, 3, 16, 16)" in msg
    assert "patch 14 vs 16" in msg and "source_patch_size=14" in msg


def test_width_mismatch_raises_with_cause(tmp_path):
    path = tmp_path / "d.pth"
    write_synthetic_checkpoint(path, vit_config("dinov2_tiny", embed_dim=96, num_heads=2), "dinov2")
    with pytest.raises(CheckpointShapeError, match="width-96 model but the config has embed_dim=64"):
        ViTBackbone(vit_config("dinov2_tiny")).load_official(path)


def test_depth_mismatch_is_reported_not_dropped(tmp_path):
    path = tmp_path / "d.pth"
    write_synthetic_checkpoint(path, vit_config("dinov2_tiny"), "dinov2", file_grid=4)
    shallow = ViTBackbone(vit_config("dinov2_tiny", depth=3, taps=(0, 1, 2)))
    rep = shallow.load_official(path)
    assert not rep.ok() and rep.missing == [] and rep.unexpected
    assert all(k.startswith("blocks.3.") for k in rep.unexpected)
    assert "UNEXPECTED (14): blocks.3.* (14 keys)" in rep.summary()
    deep = ViTBackbone(vit_config("dinov2_tiny", depth=5, taps=(0, 4)))
    rep = deep.load_official(path)
    assert rep.unexpected == [] and rep.missing and all(k.startswith("vit.blocks.4.") for k in rep.missing)
    with pytest.raises(RuntimeError, match="MISSING"):
        ViTBackbone(vit_config("dinov2_tiny", depth=5, taps=(0, 4))).load_official(path, strict=True)


def test_depth_anything_v2_loads_encoder_only(tmp_path):
    cfg = vit_config("dinov2_tiny")
    path = tmp_path / "depth_anything_v2_tiny.pth"
    sd = write_synthetic_checkpoint(path, cfg, "depth_anything_v2", file_grid=5)
    assert detect_layout(sd) == "depth_anything_v2"
    b = ViTBackbone(cfg)
    rep = b.load_official(path)
    assert rep.missing == [] and rep.unexpected == []
    assert sorted(rep.ignored) == sorted([k for k in sd if k.startswith("depth_head.")] + ["pretrained.mask_token"])
    torch.testing.assert_close(b.vit.blocks[2].ls2.gamma, sd["pretrained.blocks.2.ls2.gamma"])
    # a PromptDA-style wrapper ({'state_dict': {'pipeline.pretrained.*': ...}}) works too
    torch.save({"state_dict": {"pipeline." + k: v for k, v in sd.items()}}, tmp_path / "w.ckpt")
    assert ViTBackbone(cfg).load_official(tmp_path / "w.ckpt").ok()


# --------------------------------------------------------------------------------------- OpenAI CLIP
def _tiny_open_clip():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=4, width=64, head_width=32, patch_size=16, image_size=64),
        text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
        quick_gelu=True,  # OpenAI weights were trained with QuickGELU
    ).eval()
    with torch.no_grad():  # non-trivial norms / biases
        for n, p in model.visual.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_openai_clip_matches_open_clip_visual_tower(tmp_path):
    oc = _tiny_open_clip()
    sd = oc.state_dict()
    assert detect_layout(sd) == "openai_clip"
    torch.save(sd, tmp_path / "ViT-tiny.pt")
    jit_path = tmp_path / "ViT-tiny-jit.pt"
    torch.jit.script(oc).save(str(jit_path))  # the official release is a TorchScript archive

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = oc.visual.forward_intermediates(x, indices=[0, 1, 2, 3], output_extra_tokens=True)
        oc.visual.output_tokens = True
        pooled, tokens = oc.visual(x)
    for path in (tmp_path / "ViT-tiny.pt", jit_path):
        b = ViTBackbone(vit_config("clip_tiny")).eval()
        rep = b.load_official(path)
        assert rep.missing == [] and rep.unexpected == [], rep.summary()
        assert "visual.proj" not in rep.ignored and "logit_scale" in rep.ignored
        with torch.no_grad():
            out = b(x, project=True)
        for mine, theirs in zip(out.features, ref["image_intermediates"]):
            torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
        for mine, theirs in zip(out.cls_tokens, ref["image_intermediates_prefix"]):
            torch.testing.assert_close(mine, theirs[:, 0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.final_tokens[:, 1:], tokens, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.projected[:, 0], pooled, atol=1e-4, rtol=1e-4)


def test_openai_clip_pos_embed_resized_for_larger_input(tmp_path):
    oc = _tiny_open_clip()  # 64 px -> 4x4 grid in the file
    torch.save(oc.state_dict(), tmp_path / "v.pt")
    b = ViTBackbone(vit_config("clip_tiny", img_size=128, pos_interp="bilinear"))
    rep = b.load_official(tmp_path / "v.pt")
    assert rep.ok() and rep.converted == ["pos_embed 4x4->8x8 (bilinear)"]
    assert tuple(b(torch.randn(1, 3, 128, 128)).features[0].shape) == (1, 64, 8, 8)


def test_family_mismatch_raises(tmp_path):
    torch.save(_tiny_open_clip().state_dict(), tmp_path / "v.pt")
    with pytest.raises(ValueError, match="openai_clip layout"):
        ViTBackbone(vit_config("dinov2_tiny")).load_official(tmp_path / "v.pt")


# ------------------------------------------------------------------------------------------ EVA-CLIP
def _layer_norm(x, sd, key, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"], eps)


def _eva_clip_reference(sd, x, patch, heads, pt_grid):
    """EVA-CLIP image tower written from its definition (independent of timm), on the raw file keys:
    q/k/v projections with q_bias / v_bias (no k bias), 2-D rotary embedding on the patch tokens with
    interleaved pairs and frequencies t = arange(n) / n * pt_grid (EVA-CLIP's intp_freq), sub-LN after the
    attention and inside the SwiGLU MLP (silu(w1 x) * w2 x -> ffn_ln -> w3), pre-norm blocks, final norm,
    linear head on all tokens."""
    v = {k[len("visual."):]: t for k, t in sd.items() if k.startswith("visual.")}
    t = F.conv2d(x, v["patch_embed.proj.weight"], v["patch_embed.proj.bias"], stride=patch)
    B, D, h, w = t.shape
    assert h == w
    t = torch.cat([v["cls_token"].expand(B, -1, -1), t.flatten(2).transpose(1, 2)], 1) + v["pos_embed"]
    hd = D // heads
    half = hd // 2
    inv = 1.0 / (10000 ** (torch.arange(0, half, 2).float() / half))
    f = torch.outer(torch.arange(h).float() / h * pt_grid, inv).repeat_interleave(2, -1)
    f2 = torch.cat([f[:, None].expand(h, w, half), f[None, :].expand(h, w, half)], -1).reshape(h * w, hd)
    cos, sin = f2.cos(), f2.sin()

    def rotate(z):
        z1, z2 = z[..., 0::2], z[..., 1::2]
        return torch.stack([-z2, z1], -1).flatten(-2)

    def rope(z):
        zp = z[:, :, 1:]
        return torch.cat([z[:, :, :1], zp * cos + rotate(zp) * sin], 2)

    n_blocks = 1 + max(int(k.split(".")[1]) for k in v if k.startswith("blocks."))
    for i in range(n_blocks):
        p = f"blocks.{i}."
        y = _layer_norm(t, v, p + "norm1")
        q = F.linear(y, v[p + "attn.q_proj.weight"], v[p + "attn.q_bias"])
        k = F.linear(y, v[p + "attn.k_proj.weight"])
        val = F.linear(y, v[p + "attn.v_proj.weight"], v[p + "attn.v_bias"])
        q, k, val = (z.reshape(B, -1, heads, hd).transpose(1, 2) for z in (q, k, val))
        q, k = rope(q), rope(k)
        a = torch.softmax(q @ k.transpose(-1, -2) * hd**-0.5, -1) @ val
        a = _layer_norm(a.transpose(1, 2).reshape(B, -1, D), v, p + "attn.inner_attn_ln")
        t = t + F.linear(a, v[p + "attn.proj.weight"], v[p + "attn.proj.bias"])
        y = _layer_norm(t, v, p + "norm2")
        hid = F.silu(F.linear(y, v[p + "mlp.w1.weight"], v[p + "mlp.w1.bias"])) * F.linear(
            y, v[p + "mlp.w2.weight"], v[p + "mlp.w2.bias"])
        hid = _layer_norm(hid, v, p + "mlp.ffn_ln")
        t = t + F.linear(hid, v[p + "mlp.w3.weight"], v[p + "mlp.w3.bias"])
    t = _layer_norm(t, v, "norm")
    return t, F.linear(t, v["head.weight"], v["head.bias"])


@pytest.mark.parametrize("ref_grid", [4, 3])
def test_eva_clip_layout_matches_reference_forward(tmp_path, ref_grid):
    cfg = vit_config("eva02_tiny", rope_ref_grid=ref_grid)  # 3: rope frequencies interpolated (intp_freq)
    path = tmp_path / "EVA02_CLIP_tiny.pt"
    sd = write_synthetic_checkpoint(path, cfg, "eva_clip", file_grid=4, seed=1)
    assert detect_layout(sd) == "eva_clip"
    assert {"visual.blocks.0.attn.q_bias", "visual.blocks.0.mlp.w3.weight", "visual.rope.freqs_cos"} <= set(sd)
    b = ViTBackbone(cfg).eval()
    rep = b.load_official(path)
    assert rep.missing == [] and rep.unexpected == [], rep.summary()
    assert "visual.rope.freqs_cos" in rep.ignored and "visual.blocks.3.attn.rope.freqs_sin" in rep.ignored
    assert any(k.startswith("text.") for k in rep.ignored) and "logit_scale" in rep.ignored
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = b(x, project=True)
        ref_tokens, ref_proj = _eva_clip_reference(sd, x, patch=16, heads=cfg.num_heads, pt_grid=ref_grid)
    torch.testing.assert_close(out.final_tokens, ref_tokens, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.projected, ref_proj, atol=1e-4, rtol=1e-4)


def test_eva_clip_key_mapping_agrees_with_timm_filter():
    from timm.models.eva import checkpoint_filter_fn

    cfg = vit_config("eva02_tiny")
    sd = synthetic_official_state_dict(cfg, "eva_clip", file_grid=4)
    b = ViTBackbone(cfg)
    mine, _, _ = to_backbone_keys(sd, "eva_clip", has_proj=True)
    timm_keys = set(checkpoint_filter_fn(dict(sd), b.vit))
    assert {k[len("vit."):] for k in mine if k.startswith("vit.")} == timm_keys - {"head.weight", "head.bias"}
    assert {"head.weight", "head.bias"} <= timm_keys and {"proj.weight", "proj.bias"} <= set(mine)


def test_eva_clip_without_projection_ignores_head(tmp_path):
    path = tmp_path / "e.pt"
    write_synthetic_checkpoint(path, vit_config("eva02_tiny"), "eva_clip", file_grid=3)
    b = ViTBackbone(vit_config("eva02_tiny", proj_dim=None))  # VLTSeg: no text side
    rep = b.load_official(path)
    assert rep.ok() and "visual.head.weight" in rep.ignored and "pos_embed 3x3->4x4 (bicubic)" in rep.converted


# ------------------------------------------------------------------------------------ meta / misc
@pytest.mark.parametrize("name,layout", [("eva02_tiny", "eva_clip"), ("dinov2_tiny", "dinov2")])
def test_meta_device_build_then_load(tmp_path, name, layout):
    cfg = vit_config(name)
    path = tmp_path / "w.pt"
    write_synthetic_checkpoint(path, cfg, layout, file_grid=4)
    with torch.device("meta"):
        lazy = ViTBackbone(cfg)
    rep = lazy.load_official(path)
    assert rep.ok()
    assert not any(t.is_meta for t in list(lazy.parameters()) + list(lazy.buffers()))
    eager = ViTBackbone(cfg)
    eager.load_official(path)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(lazy.eval()(x).final_tokens, eager.eval()(x).final_tokens)
    assert lazy.frozen == cfg.frozen == (not any(p.requires_grad for p in lazy.parameters()))


def test_backbone_state_dict_roundtrip(tmp_path):
    torch.manual_seed(0)
    a = ViTBackbone(vit_config("clip_tiny"))
    torch.save(a.state_dict(), tmp_path / "mine.pt")
    assert detect_layout(read_state_dict(tmp_path / "mine.pt")) == "backbone"
    b = ViTBackbone(vit_config("clip_tiny"))
    assert b.load_official(tmp_path / "mine.pt").ok()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_weights_path_and_unknown_layout_errors(tmp_path):
    cfg = vit_config("dinov2_vitl14")
    with pytest.raises(FileNotFoundError) as e:  # methods.weights.MissingWeightsError
        weights_path(cfg, tmp_path)
    assert "dinov2_vitl14_pretrain.pth" in str(e.value) and str(tmp_path) in str(e.value)
    assert "dl.fbaipublicfiles.com" in str(e.value)
    (tmp_path / "dinov2_vitl14_pretrain.pth").write_bytes(b"")
    assert weights_path(cfg, tmp_path).name == "dinov2_vitl14_pretrain.pth"
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="unrecognised checkpoint layout"):
        ViTBackbone(vit_config("dinov2_tiny")).load_official(tmp_path / "x.pt")
