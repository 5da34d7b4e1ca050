"""ViTBackbone: taps, hook, freezing, dynamic sizes, necks, real-scale parameter counts (meta device)."""


import pytest
import torch
from torch import nn

from methods.backbones import (
    VIT_CONFIGS,
    MultiScaleResample,
    SimpleFPN,
    ViTBackbone,
    count_params,
    vit_config,
)

TINY = ["dinov2_tiny", "eva02_tiny", "clip_tiny"]


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return {n: ViTBackbone(vit_config(n, frozen=False)).eval() for n in TINY}


@pytest.mark.parametrize("name", TINY)
def test_tap_shapes(tiny_models, name):
    b = tiny_models[name]
    cfg = b.cfg
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = b(x, project=cfg.proj_dim is not None)
    assert len(out.features) == len(cfg.taps) == len(out.cls_tokens)
    for f, c in zip(out.features, out.cls_tokens):
        assert f.shape == (2, cfg.embed_dim, 4, 6)
        assert c.shape == (2, cfg.embed_dim)
    assert out.grid == (4, 6)
    assert out.final_tokens.shape == (2, 1 + 24, cfg.embed_dim)
    if cfg.proj_dim:
        assert out.projected.shape == (2, 25, cfg.proj_dim)
    else:
        assert out.projected is None
    # the last tap is the last block: final tokens = norm(last tap tokens)
    last = torch.cat([out.cls_tokens[-1][:, None], out.features[-1].flatten(2).transpose(1, 2)], 1)
    torch.testing.assert_close(b.vit.norm(last), out.final_tokens)
    assert b.num_prefix_tokens == 1 and b.embed_dim == cfg.embed_dim and b.patch_size == 16


@pytest.mark.parametrize("name", TINY)
def test_any_input_size(tiny_models, name):
    """Other grids interpolate pos-embed (and rebuild EVA rope); non-multiples drop the trailing pixels."""
    b = tiny_models[name]
    with torch.no_grad():
        for hw, grid in [((32, 48), (2, 3)), ((112, 80), (7, 5)), ((70, 100), (4, 6))]:
            out = b(torch.randn(1, 3, *hw))
            assert out.features[0].shape[-2:] == grid
            assert torch.isfinite(out.final_tokens).all()
        x = torch.randn(1, 3, 64, 96)
        torch.testing.assert_close(b(x).final_tokens, b(torch.nn.functional.pad(x, (0, 7, 0, 5))).final_tokens)


def test_native_grid_uses_stored_pos_embed(tiny_models):
    b = tiny_models["dinov2_tiny"]
    assert b.pos_embed_for((4, 4)) is b.vit.pos_embed
    pe = b.pos_embed_for((6, 5))
    assert pe.shape == (1, 1 + 30, 64)
    torch.testing.assert_close(pe[:, 0], b.vit.pos_embed[:, 0])  # class position untouched


@pytest.mark.parametrize("name", TINY)
def test_after_block_hook(tiny_models, name):
    b = tiny_models[name]
    x = torch.randn(2, 3, 64, 64)
    calls = []

    def record(i, t, hw):
        calls.append((i, tuple(t.shape), hw))
        return t

    with torch.no_grad():
        ref = b(x)
        same = b(x, after_block=record)
    assert [c[0] for c in calls] == list(range(b.cfg.depth))
    assert all(c[1] == (2, 17, b.embed_dim) and c[2] == (4, 4) for c in calls)
    torch.testing.assert_close(same.final_tokens, ref.final_tokens)

    def shift_patches(i, t, hw):  # Rein-style: modify patch tokens only, after block 1
        if i == 1:
            t = torch.cat([t[:, :1], t[:, 1:] + 0.5], dim=1)
        return t

    with torch.no_grad():
        mod = b(x, after_block=shift_patches)
    torch.testing.assert_close(mod.features[0], ref.features[0])  # tap 0 is before the change
    torch.testing.assert_close(mod.features[1], ref.features[1] + 0.5)  # taps read after the hook
    assert not torch.allclose(mod.features[2], ref.features[2])  # propagates through later blocks
    assert not torch.allclose(mod.final_tokens, ref.final_tokens)


def test_frozen_backbone_stays_eval_and_passes_gradients():
    class Parent(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = ViTBackbone(vit_config("dinov2_tiny", drop_path=0.1))
            self.head = nn.Linear(64, 3)

    m = Parent()
    assert m.backbone.frozen and not m.backbone.trainable
    m.train()
    assert m.head.training
    assert not any(mod.training for mod in m.backbone.modules())
    assert count_params(m.backbone, trainable_only=True) == 0
    assert count_params(m, trainable_only=True) == 64 * 3 + 3
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    out = m.backbone(x)
    out.features[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients reach activations (Rein needs this)
    assert all(p.grad is None for p in m.backbone.parameters())
    # deterministic despite drop_path 0.1, because it stays in eval mode
    with torch.no_grad():
        torch.testing.assert_close(m.backbone(x).final_tokens, m.backbone(x).final_tokens)
    m.backbone.unfreeze()
    m.train()
    assert m.backbone.training and count_params(m.backbone, trainable_only=True) == count_params(m.backbone)


def test_trainable_config_and_grad_checkpointing():
    torch.manual_seed(0)
    cfg = vit_config("eva02_tiny", frozen=False)
    a = ViTBackbone(cfg).train()
    b = ViTBackbone(vit_config("eva02_tiny", frozen=False, grad_checkpointing=True)).train()
    b.load_state_dict(a.state_dict())
    assert a.training and all(p.requires_grad for p in a.parameters())
    x = torch.randn(2, 3, 48, 48)
    ya, yb = a(x).final_tokens, b(x).final_tokens
    torch.testing.assert_close(ya, yb)
    ya.square().mean().backward()
    yb.square().mean().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


def test_sdpa_fused_attention_everywhere(tiny_models):
    for b in tiny_models.values():
        attns = [blk.attn for blk in b.vit.blocks]
        assert attns and all(getattr(a, "fused_attn", False) for a in attns)


def test_normalize_uses_config_stats(tiny_models):
    b = tiny_models["clip_tiny"]
    img = torch.tensor(b.cfg.mean).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert b.normalize(img).abs().max() < 1e-6


def test_multiscale_resample():
    neck = MultiScaleResample()
    assert count_params(neck) == 0
    feats = [torch.randn(2, 8, 6, 4) for _ in range(4)]
    out = neck(feats)
    assert [tuple(o.shape[-2:]) for o in out] == [(24, 16), (12, 8), (6, 4), (3, 2)]
    assert out[2] is feats[2]
    torch.testing.assert_close(out[1], nn.functional.interpolate(feats[1], size=(12, 8), mode="bilinear"))
    with pytest.raises(ValueError):
        neck(feats[:3])


def test_simple_fpn():
    fpn = SimpleFPN(16).train()
    assert isinstance(fpn.fpn1[-1], nn.ConvTranspose2d) and isinstance(fpn.fpn1[1], nn.BatchNorm2d)
    assert count_params(fpn, trainable_only=True) == count_params(fpn) > 0
    out = fpn([torch.randn(2, 16, 4, 6) for _ in range(4)])
    assert [tuple(o.shape) for o in out] == [(2, 16, 16, 24), (2, 16, 8, 12), (2, 16, 4, 6), (2, 16, 2, 3)]


def test_config_validation_and_overrides():
    cfg = vit_config("dinov2_vitl14", img_size=1024)
    assert cfg.grid_size == (64, 64) and VIT_CONFIGS["dinov2_vitl14"].img_size == 512
    with pytest.raises(KeyError):
        vit_config("nope")
    with pytest.raises(TypeError):
        vit_config("dinov2_tiny", not_a_field=1)
    with pytest.raises(ValueError, match="taps"):
        vit_config("dinov2_tiny", taps=(1, 7))
    with pytest.raises(ValueError, match="family"):
        vit_config("dinov2_tiny", family="swin")


# exact parameter counts of the real-scale configs (computed; see the module docstrings):
# DINOv2-L official file: 304,368,640 = timm ViT-L/14 @518 (304,367,616) + mask_token (1,024). Converted
# patch 16 @512: patch-embed +184,320 (16x16 vs 14x14 kernel), pos-embed -353,280 (1+32^2 vs 1+37^2 rows).
REAL_COUNTS = {
    "dinov2_vitl14": (304_198_656, 0),
    "dinov2_vitl14_p14": (304_367_616, 0),
    "depth_anything_v2_vitl": (304_198_656, 0),
    # EVA02-CLIP-L visual @224 with head = 304,105,152 (install.md ~304.1M); @512/14 the pos-embed has
    # 1+36^2 rows instead of 1+16^2 (+1,064,960). Head 1024->768 with bias = 787,200.
    "eva02_clip_vitl14": (305_170_112, 787_200),
    "eva02_clip_vitl14_s4b": (304_382_912, 0),
    # OpenAI CLIP ViT-B/16 visual @224 = 86,192,640 (install.md 86.2M); @512 pos-embed +635,904;
    # proj 768->512 without bias = 393,216.
    "clip_vitb16": (86_828_544, 393_216),
}


def test_real_scale_param_counts_on_meta_device():
    with torch.device("meta"):  # no memory, no weights: real scale on any machine
        models = {n: ViTBackbone(vit_config(n)) for n in REAL_COUNTS}
    for name, (total, proj) in REAL_COUNTS.items():
        b = models[name]
        assert count_params(b) == total, name
        assert (count_params(b.proj) if b.proj is not None else 0) == proj, name
    dino = models["dinov2_vitl14"]
    assert dino.vit.patch_embed.proj.weight.shape == (1024, 3, 16, 16)
    assert dino.vit.pos_embed.shape == (1, 1 + 32 * 32, 1024)
    assert count_params(dino) - 304_368_640 == 184_320 - 353_280 - 1024  # vs the official file
    assert models["eva02_clip_vitl14"].vit.pos_embed.shape == (1, 1 + 36 * 36, 1024)
    assert count_params(models["eva02_clip_vitl14_s4b"]) + 787_200 - 1_064_960 == 304_105_152
    assert count_params(models["clip_vitb16"]) - 635_904 == 86_192_640
    assert models["dinov2_vitl14"].frozen and not models["eva02_clip_vitl14_s4b"].frozen
    # the meta forward runs shape inference at real scale
    with torch.device("meta"):
        out = dino(torch.empty(1, 3, 512, 512, device="meta"))
    assert [tuple(f.shape) for f in out.features] == [(1, 1024, 32, 32)] * 4
