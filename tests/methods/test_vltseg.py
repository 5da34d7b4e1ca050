"""VLTSeg (methods/vltseg.py): param groups / LR multipliers / grad clip, the re-implementation's encoder quirks,
the optional PTM loss, Zenodo (mmseg) checkpoints, real-scale counts and a small overfit run."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from methods.backbones.vit import SimpleFPN
from methods.base import CLIP_MEAN, IMAGENET_MEAN
from methods.heads.mmdet_keys import mmdet_mask2former_template, synthetic_state_dict
from methods.vltseg import (
    MMPretrainRope,
    VLTSeg,
    expand_norm_rules,
    vltseg_backbone_template,
    vltseg_recipe,
)
from runners.train import lr_factor


def tiny_vltseg(backbone: str = "eva02_clip_vitl14_s4b", **fields) -> VLTSeg:
    cfg = VLTSeg.default_config(backbone, scale="miniature", **fields)
    cfg.head = dataclasses.replace(cfg.head, hidden_dim=32, num_queries=8, num_heads=2, pixel_decoder_layers=1,
                                   pixel_decoder_ffn=32, decoder_layers=2, decoder_ffn=32, train_num_points=64)
    return VLTSeg(cfg)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_vltseg()


# ------------------------------------------------------------------------------------------ optimisation
def test_param_groups_lr_multipliers_and_decay(model):
    recipe = vltseg_recipe("paper")
    groups = model.param_groups(recipe)
    where = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["names"]}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(where) == sorted(trainable)  # every trainable parameter in exactly one group
    assert sum(len(g["names"]) for g in groups) == len(trainable)
    bb, head = 1e-5, 1e-4
    expected = {
        # backbone: lr x0.1; norms and the position table without decay
        "backbone.vit.blocks.0.norm1.weight": (bb, 0.0),
        "backbone.vit.blocks.3.norm2.bias": (bb, 0.0),
        "backbone.vit.blocks.1.mlp.norm.weight": (bb, 0.0),
        "backbone.vit.pos_embed": (bb, 0.0),
        "backbone.vit.cls_token": (bb, 0.05),
        "backbone.vit.patch_embed.proj.weight": (bb, 0.05),
        "backbone.vit.blocks.2.attn.q_proj.weight": (bb, 0.05),
        "backbone.vit.blocks.2.attn.q_proj.bias": (bb, 0.05),
        "backbone.vit.blocks.2.attn.k_proj.bias": (bb, 0.05),
        "backbone.vit.blocks.0.mlp.fc1_g.weight": (bb, 0.05),
        # the re-implementation's fpn neck sits in its backbone: lr x0.1, decay kept (its BN too)
        "neck.fpn1.0.weight": (bb, 0.05),
        "neck.fpn1.1.weight": (bb, 0.05),
        "neck.fpn2.weight": (bb, 0.05),
        # head: full LR; query / level embeddings and norms without decay
        "decode_head.query_feat.weight": (head, 0.0),
        "decode_head.query_embed.weight": (head, 0.0),
        "decode_head.level_embed": (head, 0.0),
        "decode_head.pixel_decoder.level_embed": (head, 0.05),  # mmdet's level_encoding matches no key
        "decode_head.decoder_norm.weight": (head, 0.0),
        "decode_head.layers.1.norms.0.bias": (head, 0.0),
        "decode_head.pixel_decoder.input_convs.0.1.weight": (head, 0.0),  # GroupNorm
        "decode_head.pixel_decoder.layers.0.norm1.weight": (head, 0.0),
        "decode_head.class_predictor.weight": (head, 0.05),
        "decode_head.pixel_decoder.layers.0.self_attn.value_proj.weight": (head, 0.05),
    }
    for name, (lr, wd) in expected.items():
        assert where[name] == (pytest.approx(lr), pytest.approx(wd)), name
    # the head's norms are not caught by the backbone norm rule
    rules = expand_norm_rules(model, recipe.param_rules)
    assert all(not r.key.startswith("decode_head") or "[norm]" not in r.key for r in rules)
    assert not any(r.key.endswith("[norm]") for r in rules)


def test_grad_clip_and_constant_then_poly_schedule():
    recipe = vltseg_recipe("paper")
    assert recipe.grad_clip == 0.01 and recipe.constant_iters == 500 and recipe.iterations == 5000
    for it in (0, 250, 499, 500):
        assert lr_factor(recipe, it, 1e-5) == pytest.approx(1e-5)
    # mmengine's PolyLR(begin=500, end=5000): progress over end - begin - 1 = 4499 steps, 0 at the last one
    assert recipe.poly_convention == "mmengine"
    assert lr_factor(recipe, 2750, 1e-4) == pytest.approx(1e-4 * (1 - 2250 / 4499) ** 0.9, rel=1e-12)
    assert lr_factor(recipe, 4999, 1e-4) == pytest.approx(0.0)
    assert vltseg_recipe("miniature").grad_clip == 0.01


def test_trainer_applies_the_clip_and_multipliers(tmp_path, monkeypatch):
    """One runner step: the 0.01 max-norm clip over all trainable parameters, and the per-group LRs."""
    import runners.train as train

    class Tiny:
        def __len__(self):
            return 2

        def __getitem__(self, index):
            i = index[0] if isinstance(index, tuple) else index
            g = torch.Generator().manual_seed(i)
            return {"image": torch.rand(3, 32, 32, generator=g) * 255,
                    "label": torch.randint(0, 19, (32, 32), generator=g), "name": str(i)}

    calls = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        calls.append((len(params), max_norm))
        return original(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(train.torch.nn.utils, "clip_grad_norm_", spy)
    torch.manual_seed(0)
    method = tiny_vltseg()
    recipe = vltseg_recipe("miniature", iterations=1, batch_size=2)
    trainer = train.Trainer(method, recipe, Tiny(), out_dir=tmp_path, seed=0, device=torch.device("cpu"),
                            spec_hash="x", progress=False, log=lambda *_: None)
    trainer.run(resume=False)
    n_trainable = sum(1 for p in method.parameters() if p.requires_grad)
    assert calls == [(n_trainable, 0.01)]
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert logged[0]["grad_norm"] > 0


# ------------------------------------------------------------------------------------------ architecture
def test_reimplementation_encoder_quirks(model):
    blocks = model.backbone.vit.blocks
    assert all(isinstance(b.attn.norm, nn.Identity) for b in blocks)  # no attention sub-LN
    assert isinstance(model.backbone.vit.norm, nn.Identity)  # final_norm=False
    assert isinstance(model.backbone.vit.rope, MMPretrainRope)
    assert all(b.attn.k_proj.bias is not None and not b.attn.k_proj.bias.any() for b in blocks)  # fused-qkv key bias
    assert isinstance(model.neck, SimpleFPN)
    assert model.config.image_mean == IMAGENET_MEAN
    assert all(p.requires_grad for p in model.parameters())  # fully fine-tuned
    clip = VLTSeg.default_config("clip_vitb16")
    assert clip.image_mean == CLIP_MEAN and clip.vit.taps == (3, 5, 7, 11)
    eva = VLTSeg.default_config()
    assert (eva.vit.taps, eva.vit.drop_path, eva.vit.patch_size, eva.vit.grid_size) == ((9, 14, 19, 23), 0.2, 14,
                                                                                       (16, 16))
    assert eva.head.num_queries == 100 and eva.vit.weights_file == "EVA02_CLIP_L_psz14_s4B.pt"
    plain = tiny_vltseg(neck="bilinear", rope="eva_clip", attn_inner_norm=True, final_norm=True, k_bias=False)
    assert plain.backbone.vit.blocks[0].attn.k_proj.bias is None
    assert not isinstance(plain.backbone.vit.rope, MMPretrainRope)
    assert isinstance(plain.backbone.vit.blocks[0].attn.norm, nn.LayerNorm)
    assert not any(n.startswith("neck.") for n, _ in plain.named_parameters())


def test_mmpretrain_rope_tables():
    rope = MMPretrainRope(8)
    ang = rope.angles((2, 3))  # head dim 8: 2 frequencies [1, 1/100], positions scaled to 8/2 = 4
    th, tw, f = [0.0, 2.0], [0.0, 4 / 3, 8 / 3], [1.0, 0.01]
    for i in range(2):
        for j in range(3):
            want = [th[i] * f[0], th[i] * f[1], th[i] * f[0], th[i] * f[1],  # tiled, not interleaved
                    tw[j] * f[0], tw[j] * f[1], tw[j] * f[0], tw[j] * f[1]]
            torch.testing.assert_close(ang[i * 3 + j], torch.tensor(want))
    emb = rope.get_embed([2, 3])
    torch.testing.assert_close(emb, torch.cat([ang.sin(), ang.cos()], dim=-1))


# ------------------------------------------------------------------------------------------ training
def test_train_predict_and_overfit():
    torch.manual_seed(0)
    model = tiny_vltseg().train()
    recipe = vltseg_recipe("miniature", lr=1e-2)
    opt = torch.optim.AdamW(model.param_groups(recipe), lr=recipe.lr, weight_decay=recipe.weight_decay)
    params = [p for p in model.parameters() if p.requires_grad]
    images = torch.rand(2, 3, 32, 32) * 255
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, :16] = 2
    labels[:, 20:, 20:] = 11
    history = []
    for _ in range(12):
        losses = model.training_step(images, labels)
        assert set(losses) == {"loss_cls", "loss_mask", "loss_dice"}  # PTM off by default
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        opt.step()
        history.append(total.item())
    assert min(history[-3:]) < 0.6 * history[0], history
    assert model.backbone.vit.blocks[0].attn.q_proj.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        scores = model.predict(torch.rand(1, 3, 64, 80) * 255)
    assert scores.shape == (1, 19, 64, 80) and torch.isfinite(scores).all()


def test_ptm_loss_option():
    torch.manual_seed(0)
    model = tiny_vltseg(ptm_loss_weight=0.5).train()
    assert model.text_encoder is not None and model.backbone.proj is not None
    assert not any(p.requires_grad for p in model.text_encoder.parameters())  # frozen text tower
    images, labels = torch.rand(2, 3, 32, 32) * 255, torch.randint(0, 19, (2, 32, 32))
    losses = model.training_step(images, labels)
    assert "loss_ptm" in losses and torch.isfinite(losses["loss_ptm"])
    losses["loss_ptm"].backward()
    assert model.backbone.proj.weight.grad.abs().sum() > 0
    assert model.class_text_embeddings().shape == (19, model.text_encoder.embed_dim)
    assert tiny_vltseg().text_encoder is None


# ------------------------------------------------------------------------------------------ checkpoints
def test_zenodo_checkpoint_loads_into_the_right_tensors(tmp_path, model):
    cfg = model.config
    template = vltseg_backbone_template(cfg.vit)
    template.update(mmdet_mask2former_template(cfg.head))
    sd = synthetic_state_dict(template, seed=7)
    sd["backbone.fpn1.1.num_batches_tracked"] = torch.tensor(123)
    path = tmp_path / "vltseg_gta_1.pth"
    torch.save({"meta": {}, "state_dict": sd}, path)
    fresh = tiny_vltseg()
    report = fresh.load_checkpoint(path)
    assert report.missing == [] and report.unexpected == [], report.summary()
    assert any("qkv split" in n for n in report.converted)
    c, h = cfg.vit.embed_dim, int(cfg.vit.embed_dim * cfg.vit.mlp_ratio)
    blk = fresh.backbone.vit.blocks[1]
    qkv_w, qkv_b = sd["backbone.layers.1.attn.qkv.weight"], sd["backbone.layers.1.attn.qkv.bias"]
    assert torch.equal(blk.attn.q_proj.weight, qkv_w[:c]) and torch.equal(blk.attn.k_proj.weight, qkv_w[c:2 * c])
    assert torch.equal(blk.attn.v_proj.weight, qkv_w[2 * c:])
    assert torch.equal(blk.attn.q_proj.bias, qkv_b[:c]) and torch.equal(blk.attn.v_proj.bias, qkv_b[2 * c:])
    assert torch.equal(blk.attn.k_proj.bias, qkv_b[c:2 * c])  # the re-implementation's trainable key bias
    w12 = sd["backbone.layers.1.mlp.w12.weight"]
    assert torch.equal(blk.mlp.fc1_g.weight, w12[:h]) and torch.equal(blk.mlp.fc1_x.weight, w12[h:])
    assert torch.equal(blk.mlp.fc2.weight, sd["backbone.layers.1.mlp.w3.weight"])
    assert torch.equal(blk.mlp.norm.bias, sd["backbone.layers.1.mlp.norm.bias"])
    assert torch.equal(fresh.backbone.vit.pos_embed, sd["backbone.pos_embed"])
    assert torch.equal(fresh.backbone.vit.patch_embed.proj.weight, sd["backbone.patch_embed.projection.weight"])
    assert torch.equal(fresh.neck.fpn1[1].running_var, sd["backbone.fpn1.1.running_var"])
    assert int(fresh.neck.fpn1[1].num_batches_tracked) == 123
    assert torch.equal(fresh.neck.fpn2.weight, sd["backbone.fpn2.weight"])
    assert torch.equal(fresh.decode_head.query_feat.weight, sd["decode_head.query_feat.weight"])
    assert torch.equal(fresh.decode_head.class_predictor.bias, sd["decode_head.cls_embed.bias"])
    # our own checkpoints round-trip
    again = tiny_vltseg()
    assert again.load_checkpoint(fresh.checkpoint_state_dict()).ok()


def test_converted_attention_matches_the_reimplementation_attention(model):
    """After loading a Zenodo-style checkpoint, one of our attention blocks computes what the
    re-implementation's does from the raw tensors: fused qkv (with its key bias), mmpretrain's rotary
    embedding on the patch tokens, no attention sub-LN, output projection."""
    torch.manual_seed(0)
    cfg = model.config
    template = vltseg_backbone_template(cfg.vit)
    template.update(mmdet_mask2former_template(cfg.head))
    sd = synthetic_state_dict(template, seed=11)
    fresh = tiny_vltseg()
    assert fresh.load_checkpoint(sd).ok()
    h = w = 4
    heads, c = cfg.vit.num_heads, cfg.vit.embed_dim
    hd = c // heads
    x = torch.randn(2, 1 + h * w, c)
    ours = fresh.backbone.vit.blocks[0].attn(x, rope=fresh.backbone.vit.rope.get_embed([h, w]))
    # the re-implementation, written out
    qkv = x @ sd["backbone.layers.0.attn.qkv.weight"].t() + sd["backbone.layers.0.attn.qkv.bias"]
    q, k, v = qkv.reshape(2, 1 + h * w, 3, heads, hd).permute(2, 0, 3, 1, 4)
    half = hd // 2
    freq = 1.0 / 10000 ** (torch.arange(0, half, 2).float() / half)
    ph = (torch.arange(h) / h * half)[:, None] * freq[None]
    pw = (torch.arange(w) / w * half)[:, None] * freq[None]
    pos = torch.cat([ph.repeat(1, 2)[:, None].expand(h, w, half), pw.repeat(1, 2)[None].expand(h, w, half)], -1)
    pos = pos.reshape(h * w, hd)

    def rope(t):
        pairs = t.reshape(*t.shape[:-1], -1, 2)
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).reshape(t.shape)
        return t * pos.cos() + rotated * pos.sin()

    q = torch.cat([q[:, :, :1], rope(q[:, :, 1:])], dim=2)
    k = torch.cat([k[:, :, :1], rope(k[:, :, 1:])], dim=2)
    attn = (q @ k.transpose(-2, -1) * hd ** -0.5).softmax(-1)
    ref = (attn @ v).transpose(1, 2).reshape(2, 1 + h * w, c)
    ref = ref @ sd["backbone.layers.0.attn.proj.weight"].t() + sd["backbone.layers.0.attn.proj.bias"]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_official_eva_clip_file_reports_dropped_tensors_as_ignored(tmp_path, model):
    from methods.backbones.checkpoints import synthetic_official_state_dict

    sd = synthetic_official_state_dict(dataclasses.replace(model.config.vit, subln=True), "eva_clip", seed=2)
    path = tmp_path / "EVA02_CLIP_tiny.pt"
    torch.save(sd, path)
    fresh = tiny_vltseg()
    report = fresh._load_official(path)
    assert report.missing == [] and report.unexpected == [], report.summary()
    assert any("inner_attn_ln" in k for k in report.ignored) and any(k.startswith("visual.norm.") for k in
                                                                      report.ignored)
    assert torch.equal(fresh.backbone.vit.blocks[0].attn.q_proj.weight, sd["visual.blocks.0.attn.q_proj.weight"])
    assert any("key bias" in n for n in report.converted)  # EVA-CLIP has none: kept at zero, trainable


# ------------------------------------------------------------------------------------------ real scale
def test_real_scale_parameter_counts_on_meta():
    with torch.device("meta"):
        eva = VLTSeg(VLTSeg.default_config())
        clip = VLTSeg(VLTSeg.default_config("clip_vitb16"))
    e = eva.parameter_summary()
    # EVA02-CLIP-L image tower as the re-implementation builds it: no final norm / attention sub-LN / head,
    # a trainable key bias, 16x16 position table
    assert e["per_module"]["backbone"] == {"total": 303_291_328, "trainable": 303_291_328}
    assert e["per_module"]["neck"]["trainable"] == 12_588_032
    assert e["per_module"]["decode_head"]["trainable"] == 20_565_204
    assert e["total"] == e["trainable"] == 336_444_564
    c = clip.parameter_summary()
    assert (c["per_module"]["backbone"]["total"], c["per_module"]["neck"]["total"], c["trainable"]) == \
        (86_433_792, 7_081_728, 113_818_580)


def test_dry_run_prints_exact_counts(capsys):
    from runners.run import main

    assert main(["--method", "vltseg", "--protocol", "gta2cbm", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["trainable"] == out["params"]["total"] == 336_444_564
    assert out["recipe"]["eval_variant"] == "vltseg" and out["recipe"]["grad_clip"] == 0.01
    assert out["recipe"]["augmentation"]["fixed_size"] in ([1280, 720], (1280, 720))


def test_recipes():
    gta = VLTSeg.recipe(source="gta5")
    assert (gta.iterations, gta.batch_size, gta.lr, gta.weight_decay, gta.crop_size) == (5000, 16, 1e-4, 0.05,
                                                                                         (512, 512))
    assert gta.augmentation["rescale"] == "fixed" and gta.augmentation["fixed_size"] == (1280, 720)
    assert gta.gta_split == "all" and gta.eval_variant == "vltseg"
    city = VLTSeg.recipe(source="cityscapes")
    assert (city.iterations, city.batch_size, city.crop_size, city.augmentation["fixed_size"]) == \
        (20000, 8, (1024, 1024), (2048, 1024))
    with pytest.raises(ValueError, match="sources"):
        VLTSeg.recipe(source="acdc")


# ------------------------------------------------------------------------------------------ runner smoke


@pytest.mark.slow
def test_runner_trains_and_evaluates_two_iterations(run_tiny_cell):
    """``runners.run.main`` end to end on the miniature benchmark (2 iterations; 1 image per eval split)."""
    record = run_tiny_cell("vltseg", "gta2cbm")
    assert set(record["results"]["targets"]) == {"cityscapes", "bdd100k", "mapillary"}
