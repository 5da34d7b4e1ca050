"""Rein (methods/rein.py): the token update, the query link, the frozen/trainable split, official checkpoints,
the real-scale parameter counts and a small overfit run."""

import dataclasses
import json
import math

import pytest
import torch

from methods.base import Method
from methods.heads.mmdet_keys import mmdet_mask2former_template, synthetic_state_dict
from methods.rein import (
    QueryLink,
    Rein,
    ReinTokens,
    rein_recipe,
    rein_reference_template,
    rein_token_init_bound,
)
from methods.registry import get_method_class


def tiny_rein(**fields) -> Rein:
    """DINOv2-tiny backbone (4 blocks, width 64) and a very small head with 8 queries / tokens."""
    cfg = Rein.default_config(scale="miniature")
    cfg.head = dataclasses.replace(cfg.head, hidden_dim=32, num_queries=8, num_heads=2, pixel_decoder_layers=1,
                                   pixel_decoder_ffn=32, decoder_layers=2, decoder_ffn=32, train_num_points=64)
    cfg.token_length = 8
    for k, v in fields.items():
        setattr(cfg, k, v)
    return Rein(cfg)


# ------------------------------------------------------------------------------------------ token update
def _reference_update(f, T, W1, b1, W2, b2, alpha):
    """Rein's update written out element by element: S = softmax_m(f.T_m / sqrt(C)), token 0 dropped,
    dbar = sum_{m>=1} S_m (W1 T_m + b1), dF = W2 (dbar + f) + b2, f' = f + alpha dF."""
    n_tok, c = len(T), len(T[0])
    out = []
    for fv in f:
        logits = [sum(fv[k] * T[m][k] for k in range(c)) / math.sqrt(c) for m in range(n_tok)]
        mx = max(logits)
        ex = [math.exp(v - mx) for v in logits]
        s = [e / sum(ex) for e in ex]
        t2f = [[sum(W1[i][k] * T[m][k] for k in range(c)) + b1[i] for i in range(c)] for m in range(n_tok)]
        dbar = [sum(s[m] * t2f[m][i] for m in range(1, n_tok)) for i in range(c)]
        z = [dbar[i] + fv[i] for i in range(c)]
        dF = [sum(W2[i][k] * z[k] for k in range(c)) + b2[i] for i in range(c)]
        out.append([fv[i] + alpha * dF[i] for i in range(c)])
    return torch.tensor(out, dtype=torch.float64)


def test_single_layer_token_update_matches_hand_computation():
    torch.manual_seed(0)
    C, m, r = 6, 4, 2
    rein = ReinTokens(1, C, token_length=m, lora_dim=r, patch_size=16, link_to_query=False).double()
    assert rein.scale.item() == pytest.approx(1e-3)  # alpha at init
    with torch.no_grad():  # make the update large enough to see every term
        rein.scale.fill_(0.7)
        for p in (rein.learnable_tokens_a, rein.learnable_tokens_b):
            p.copy_(torch.randn_like(p))
    x = torch.randn(1, 1 + 5, C, dtype=torch.float64)  # class token + 5 patch tokens
    out = rein(x, 0)
    T = (rein.learnable_tokens_a[0] @ rein.learnable_tokens_b[0]).tolist()
    args = [T, rein.mlp_token2feat.weight.tolist(), rein.mlp_token2feat.bias.tolist(),
            rein.mlp_delta_f.weight.tolist(), rein.mlp_delta_f.bias.tolist()]
    expected = _reference_update(x[0, 1:].tolist(), *args, 0.7)
    assert torch.equal(out[:, 0], x[:, 0])  # the class token passes unchanged
    torch.testing.assert_close(out[0, 1:], expected, rtol=1e-10, atol=1e-10)
    # the test is sensitive to the sink token: keeping token 0 gives a different result
    keep_all = ReinTokens.delta
    try:
        def no_sink(self, feats, tokens, layer):
            attn = self.attention(self.attention_logits(feats, tokens, layer), layer)
            return self.mlp_delta_f(attn @ self.mlp_token2feat(tokens) + feats)
        ReinTokens.delta = no_sink
        assert not torch.allclose(rein(x, 0)[0, 1:], expected, atol=1e-6)
    finally:
        ReinTokens.delta = keep_all
    # ... and to the 1/sqrt(C) scale
    logits = rein.attention_logits(x[:, 1:], rein.get_tokens(0), 0)
    torch.testing.assert_close(logits, x[:, 1:] @ rein.get_tokens(0).t() / math.sqrt(C))


def test_token_update_at_init_is_small_and_layerwise():
    torch.manual_seed(0)
    rein = ReinTokens(3, 16, token_length=5, lora_dim=4)
    x = torch.randn(2, 1 + 7, 16)
    d0 = rein(x, 0) - x
    d2 = rein(x, 2) - x
    assert d0.abs().max() < 0.05 and d0[:, 1:].abs().max() > 0  # alpha = 1e-3 at init
    assert not torch.allclose(d0, d2)  # each layer has its own tokens
    assert rein.get_tokens(-1).shape == (3, 5, 16)
    torch.testing.assert_close(rein.get_tokens(-1)[1], rein.get_tokens(1))


def test_init_bounds_follow_the_reference_formula():
    assert rein_token_init_bound(16, 1024, 16) == pytest.approx(math.sqrt(6 / (3 * 256 + math.sqrt(1024 * 16))))
    assert rein_token_init_bound(16, 1024, None) == pytest.approx(math.sqrt(6 / (3 * 256 + 1024)))
    torch.manual_seed(0)
    rein = ReinTokens(2, 64, token_length=10, lora_dim=8)
    bound = rein_token_init_bound(16, 64, 8)
    assert rein.learnable_tokens_a.abs().max() <= bound and rein.learnable_tokens_b.abs().max() <= bound
    assert rein.learnable_tokens_a.abs().max() > 0.8 * bound


# ------------------------------------------------------------------------------------------ query link
def test_query_link_pools_max_avg_last_interleaved():
    tokens = torch.randn(5, 3, 4)  # [layers, m, q]
    pooled = QueryLink.pool(tokens)
    assert pooled.shape == (3, 12)
    torch.testing.assert_close(pooled[:, 0::3], tokens.max(dim=0).values)
    torch.testing.assert_close(pooled[:, 1::3], tokens.mean(dim=0))
    torch.testing.assert_close(pooled[:, 2::3], tokens[-1])
    # end to end: transform = identity, merge picks column 3c + k -> Q = pooling k of the tokens
    link = QueryLink(4, 4)
    with torch.no_grad():
        link.transform.weight.copy_(torch.eye(4))
        link.transform.bias.zero_()
        link.merge.bias.zero_()
        for k, expected in ((0, tokens.max(0).values), (1, tokens.mean(0)), (2, tokens[-1])):
            link.merge.weight.zero_()
            link.merge.weight[torch.arange(4), 3 * torch.arange(4) + k] = 1.0
            torch.testing.assert_close(link(tokens), expected)


def test_head_queries_come_from_the_tokens():
    torch.manual_seed(0)
    model = tiny_rein()
    assert model.decode_head.query_feat is None and model.decode_head.query_embed is None
    q = model.head_queries()
    torch.testing.assert_close(q["query_pos"], model.reins.queries())
    torch.testing.assert_close(q["query_content"], model.decode_head.querys2feat(model.reins.queries()))
    assert q["query_pos"].shape == (8, 32)
    all_tokens = model.reins.get_tokens(-1)
    torch.testing.assert_close(model.reins.queries(), model.reins.link.merge(
        QueryLink.pool(model.reins.link.transform(all_tokens))))


# ------------------------------------------------------------------------------------------ training
def test_frozen_backbone_trainable_reins_and_head():
    torch.manual_seed(0)
    model = tiny_rein().train()
    assert not model.backbone.training and model.reins.training and model.decode_head.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("reins.", "decode_head.")) for n in trainable)
    assert not any(p.requires_grad for p in model.backbone.parameters())
    images, labels = torch.rand(2, 3, 64, 64) * 255, torch.randint(0, 19, (2, 64, 64))
    losses = model.training_step(images, labels)
    assert set(losses) == {"loss_cls", "loss_mask", "loss_dice"}
    sum(losses.values()).backward()
    grad_a = model.reins.learnable_tokens_a.grad
    assert grad_a is not None and grad_a[0].abs().sum() > 0  # reaches the first layer's tokens
    assert model.reins.scale.grad is not None and model.decode_head.querys2feat.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())
    model.eval()
    with torch.no_grad():
        scores = model.predict(images[:1, :, :48, :64])
    assert scores.shape == (1, 19, 48, 64) and torch.isfinite(scores).all()


def test_overfit_a_fixed_batch(region_batch, overfit):
    torch.manual_seed(0)
    model = tiny_rein().train()
    recipe = rein_recipe("miniature", lr=1e-2)
    opt = torch.optim.AdamW(model.param_groups(recipe), lr=recipe.lr, weight_decay=recipe.weight_decay)
    images, labels = region_batch
    history = [h["total"] for h in overfit(model, opt, images, labels, 20)]
    assert min(history[-5:]) < 0.6 * history[0], history


def test_recipes_and_weight_decay_rules():
    gta = Rein.recipe(source="gta5")
    assert (gta.iterations, gta.batch_size, gta.lr, gta.warmup_iters, gta.crop_size) == (40000, 4, 1e-4, 0, (512, 512))
    assert gta.augmentation["short_edge_choices"][0] == 256 and gta.augmentation["short_edge_choices"][-1] == 1024
    assert gta.eval_variant == "rein" and gta.gta_split == "all"
    city = Rein.recipe(source="cityscapes")
    assert (city.batch_size, city.lr, city.warmup_iters, city.constant_iters, city.crop_size) == \
        (8, 6e-5, 10000, 10000, (1024, 1024))
    mini = Rein.recipe(source="gta5", scale="miniature")
    assert mini.iterations < 1000 and mini.crop_size[0] <= 256
    with pytest.raises(ValueError, match="sources"):
        Rein.recipe(source="synthia")
    model = tiny_rein()
    decay = {n: g["decay_mult"] for g in model.param_groups(gta) for n in g["names"]}
    assert decay["reins.learnable_tokens_a"] == decay["reins.learnable_tokens_b"] == decay["reins.scale"] == 0.0
    assert decay["reins.mlp_delta_f.weight"] == 1.0 and decay["reins.link.merge.weight"] == 1.0
    assert decay["decode_head.level_embed"] == 0.0
    assert decay["decode_head.pixel_decoder.level_embed"] == 1.0  # mmdet's "level_encoding" keeps its decay
    assert decay["decode_head.decoder_norm.weight"] == 0.0 and decay["decode_head.layers.0.norms.1.bias"] == 0.0
    assert decay["decode_head.querys2feat.weight"] == 1.0
    assert get_method_class("frozen_m2f").recipe() == rein_recipe("paper")


# ------------------------------------------------------------------------------------------ checkpoints
def _official_rein_state(model: Rein, seed: int = 3) -> dict:
    cfg = model.config
    template = mmdet_mask2former_template(cfg.head, query_tables=False)
    template["decode_head.querys2feat.weight"] = (cfg.head.hidden_dim, cfg.head.hidden_dim)
    template["decode_head.querys2feat.bias"] = (cfg.head.hidden_dim,)
    template.update(rein_reference_template(cfg.vit.depth, cfg.vit.embed_dim, token_length=cfg.token_length,
                                            lora_dim=cfg.lora_dim, query_dim=cfg.head.hidden_dim))
    return synthetic_state_dict(template, seed=seed)


def test_official_checkpoint_loads_into_the_right_tensors(tmp_path):
    torch.manual_seed(0)
    model = tiny_rein()
    sd = _official_rein_state(model)
    path = tmp_path / "rein_dinov2_mask2former.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": sd}, path)
    report = model.load_checkpoint(path)
    assert report.missing == [] and report.unexpected == [], report.summary()
    assert report.converted  # says what was converted
    assert torch.equal(model.reins.learnable_tokens_a, sd["backbone.reins.learnable_tokens_a"])
    assert torch.equal(model.reins.scale, sd["backbone.reins.scale"])
    assert torch.equal(model.reins.link.merge.weight, sd["backbone.reins.merge.weight"])
    assert torch.equal(model.reins.link.transform.bias, sd["backbone.reins.transform.bias"])
    assert torch.equal(model.decode_head.querys2feat.weight, sd["decode_head.querys2feat.weight"])
    assert torch.equal(model.decode_head.class_predictor.weight, sd["decode_head.cls_embed.weight"])
    # our own checkpoints round-trip
    own = model.checkpoint_state_dict()
    fresh = tiny_rein()
    rep = fresh.load_checkpoint(own)
    assert rep.ok() and torch.equal(fresh.reins.learnable_tokens_b, model.reins.learnable_tokens_b)
    # a wrong key is reported, not swallowed
    sd2 = dict(sd)
    sd2["backbone.reins.bogus"] = torch.zeros(1)
    del sd2["decode_head.cls_embed.bias"]
    rep = tiny_rein().load_checkpoint({"state_dict": sd2}["state_dict"])
    assert rep.unexpected == ["reins.bogus"] and rep.missing == ["decode_head.class_predictor.bias"]


def test_full_weights_checkpoint_converts_the_backbone():
    """A "full" checkpoint (reference tools/generate_full_weights.py) also carries the converted DINOv2."""
    from methods.backbones.checkpoints import synthetic_official_state_dict

    torch.manual_seed(0)
    model = tiny_rein()
    sd = _official_rein_state(model)
    dino = synthetic_official_state_dict(model.config.vit, "dinov2", file_patch=16, seed=5)
    sd.update({"backbone." + k: v for k, v in dino.items() if k != "mask_token"})
    report = model.load_checkpoint(sd)
    assert report.missing == [] and report.unexpected == [], report.summary()
    assert torch.equal(model.backbone.vit.blocks[2].attn.qkv.weight, dino["blocks.2.attn.qkv.weight"])
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_eva02_backbone_follows_reins_eva2_code(tmp_path):
    """Rein's EVA2 has no attention sub-LN: the official file's ``inner_attn_ln`` is reported as ignored."""
    from methods.backbones.checkpoints import synthetic_official_state_dict

    torch.manual_seed(0)
    model = Rein(Rein.default_config("eva02_vitl14", scale="miniature"))
    assert all(isinstance(b.attn.norm, torch.nn.Identity) for b in model.backbone.vit.blocks)
    assert model.config.image_mean == Method.__init__.__globals__["IMAGENET_MEAN"]
    path = tmp_path / "eva02_tiny.pt"
    torch.save(synthetic_official_state_dict(model.config.vit, "eva_clip", seed=1, proj_dim=32), path)
    report = model._load_official(path)
    assert report.missing == [] and report.unexpected == [], report.summary()
    assert any(".attn.inner_attn_ln." in k for k in report.ignored)
    assert not any(p.requires_grad for p in model.backbone.parameters())


# ------------------------------------------------------------------------------------------ real scale
def test_real_scale_parameter_counts_on_meta():
    with torch.device("meta"):
        model = Rein(Rein.default_config("dinov2_vitl14"))
        full_rank = ReinTokens(24, 1024, token_length=100, lora_dim=None)
    counts = model.parameter_summary()
    assert counts["per_module"]["reins"] == {"total": 2_990_081, "trainable": 2_990_081}  # the reference count
    assert counts["per_module"]["backbone"]["trainable"] == 0
    assert counts["per_module"]["decode_head"]["trainable"] == 20_579_796
    assert counts["trainable"] == 2_990_081 + 20_579_796
    assert sum(p.numel() for p in full_rank.parameters()) == 2_990_081 - 24 * 100 * 16 - 24 * 16 * 1024 + 2_457_600
    cfg = model.config
    assert (cfg.vit.patch_size, cfg.vit.img_size, cfg.vit.taps, cfg.head.num_queries) == (16, 512, (7, 11, 15, 23), 100)
    eva = Rein.default_config("eva02_vitl14")
    assert eva.image_mean == Method.__init__.__globals__["IMAGENET_MEAN"]
    assert (eva.vit.patch_size, eva.vit.taps, eva.vit.drop_path, eva.vit.frozen) == (16, (7, 11, 15, 23), 0.2, True)
    assert Rein.default_config("dinov2_vitl14_1024").vit.grid_size == (64, 64)


def test_dry_run_prints_exact_counts(capsys):
    from runners.run import main

    assert main(["--method", "rein", "--protocol", "gta2cbm", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["per_module"]["reins"]["trainable"] == 2_990_081
    assert out["params"]["trainable"] == 23_569_877 and out["params"]["total"] == 327_768_533
    assert out["recipe"]["eval_variant"] == "rein"


# ------------------------------------------------------------------------------------------ runner smoke


@pytest.mark.slow
def test_runner_trains_and_evaluates_two_iterations(run_tiny_cell):
    """``runners.run.main`` end to end on the miniature benchmark (2 iterations; 1 image per eval split)."""
    record = run_tiny_cell("rein", "gta2cbm")
    assert set(record["results"]["targets"]) == {"cityscapes", "bdd100k", "mapillary"}
