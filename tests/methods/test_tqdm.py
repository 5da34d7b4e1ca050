"""tqdm: regularizers (hand-computed), fixed matching, CoOp prompt layout, frozen initial copy, param groups,
reference-checkpoint conversion and real-scale parameter counts (meta device)."""

import json
import math

import pytest
import torch

from methods.heads.criterion import semantic_targets
from methods.heads.matcher import FixedMatcher
from methods.registry import create_method, get_method_class
from methods.tqdm import (
    convert_reference_checkpoint,
    language_regularization,
    tqdm_head_key,
    tqdm_recipe,
    vision_language_regularization,
)
from runners.run import main as run_main
from runners.train import build_optimizer


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_method("tqdm", scale="miniature")


def _batch(size=64, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g) * 255
    labels = torch.randint(0, 19, (batch, size, size), generator=g)
    labels[:, : size // 8] = 255
    return images, labels


# ----------------------------------------------------------------------------------------------- losses
def test_language_loss_is_ce_over_raw_cosines_with_identity_target():
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # learned t_0, t_1 (norm does not matter)
    frozen = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # frozen prompts e_0, e_1
    c = 1 / math.sqrt(2)
    # row i: logits cos(t_i, e_j) (no temperature), target i
    row0 = -math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(c)))
    row1 = -math.log(math.exp(c) / (math.exp(0.0) + math.exp(c)))
    expected = (row0 + row1) / 2
    assert language_regularization(text, frozen).item() == pytest.approx(expected, abs=1e-6)
    # batched [B, K, E] input: the same per image
    batched = torch.stack([text, text])
    assert language_regularization(batched, frozen).item() == pytest.approx(expected, abs=1e-6)
    # optional temperature divides the logits
    t = 0.07
    row0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(c / t)))
    row1 = -math.log(math.exp(c / t) / (1.0 + math.exp(c / t)))
    assert language_regularization(text, frozen, temperature=t).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # the target is the identity: swapping the frozen prompts changes the loss
    assert language_regularization(text, frozen.flip(0)).item() != pytest.approx(expected, abs=1e-3)


def test_vision_language_loss_upsamples_bilinearly_and_ignores_255():
    # logits [1, 2, 1, 2]: class 0 scores (0, 4) left/right, class 1 scores (2, 2); labels at 2 x 4
    logits = torch.tensor([[[[0.0, 4.0]], [[2.0, 2.0]]]])
    labels = torch.tensor([[[0, 1, 255, 0], [1, 255, 0, 255]]])
    # align_corners=False, 2 -> 4 columns: weights of (left, right) = (1,0), (.75,.25), (.25,.75), (0,1)
    s0 = [0.0, 1.0, 3.0, 4.0]

    def ce(col, cls):
        z0, z1 = s0[col], 2.0
        lse = math.log(math.exp(z0) + math.exp(z1))
        return lse - (z0 if cls == 0 else z1)

    terms = [ce(0, 0), ce(1, 1), ce(3, 0), ce(0, 1), ce(2, 0)]
    got = vision_language_regularization(logits, labels)
    assert got.item() == pytest.approx(sum(terms) / len(terms), abs=1e-5)
    got_all = vision_language_regularization(logits, labels, average="all")
    assert got_all.item() == pytest.approx(sum(terms) / labels.numel(), abs=1e-5)
    # nothing valid: zero, still differentiable
    empty = vision_language_regularization(logits.requires_grad_(), torch.full_like(labels, 255))
    assert empty.item() == 0.0 and empty.requires_grad


def test_training_step_uses_score_map_over_tau(tiny):
    images, labels = _batch()
    tiny.eval()  # no dropout in the context decoder: deterministic
    with torch.no_grad():
        out = tiny.forward_features(images)
        losses = tiny.training_step(images, labels)
    expected = vision_language_regularization(out["score_map"] / 0.07, labels)
    assert losses["loss_reg_vision_language"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["score_map"].shape == (2, 19, 4, 4)  # 1/16 of 64 px (tiny patch 16)
    assert out["score_map"].abs().max() <= 1.0 + 1e-5  # cosines
    lang = language_regularization(out["text"], tiny.frozen_prompt_embeddings())
    assert losses["loss_reg_language"].item() == pytest.approx(lang.item(), rel=1e-5)
    assert set(losses) == {"loss_cls", "loss_mask", "loss_dice", "loss_reg_language",
                           "loss_reg_vision_language", "loss_reg_vision"}


# ----------------------------------------------------------------------------------------------- matching
def test_fixed_matching_assigns_query_i_to_class_i(tiny):
    matcher = tiny.decode_head.matcher
    assert isinstance(matcher, FixedMatcher) and tiny.config.head.num_queries == 19
    assert tiny.decode_head.query_feat is None and tiny.decode_head.query_embed.weight.shape == (19, 64)
    labels = torch.full((1, 32, 32), 255)
    labels[0, :16] = 13
    labels[0, 16:, :16] = 2
    labels[0, 16:, 16:] = 7
    targets = semantic_targets(labels, 19)
    q, t = matcher(torch.zeros(1, 19, 20), torch.zeros(1, 19, 32, 32), targets)[0]
    assert q.tolist() == [2, 7, 13] and targets[0]["labels"][t].tolist() == [2, 7, 13]

    # a perfect prediction by the right queries costs little; the same prediction by other queries
    # costs a lot (a Hungarian matcher would re-assign them and not notice)
    def outputs(perm):
        logits = torch.full((1, 19, 20), -10.0)
        logits[0, :, 19] = 10.0  # no object by default
        masks = torch.full((1, 19, 32, 32), -10.0)
        for cls in (2, 7, 13):
            query = perm[cls]
            logits[0, query, 19], logits[0, query, cls] = -10.0, 10.0
            masks[0, query][labels[0] == cls] = 10.0
        return {"pred_logits": logits, "pred_masks": masks}

    right = tiny.decode_head.criterion(outputs(list(range(19))), targets)
    wrong = tiny.decode_head.criterion(outputs([(i + 1) % 19 for i in range(19)]), targets)
    assert right["loss_cls"] < 1e-3 and wrong["loss_cls"] > 10
    assert right["loss_dice"] < 0.2 * wrong["loss_dice"] and right["loss_mask"] < 0.2 * wrong["loss_mask"]


# ----------------------------------------------------------------------------------------------- text side
def test_coop_prompt_layout_sos_context_classname(tiny):
    enc = tiny.text_encoder
    n_ctx = tiny.contexts.shape[1]
    assert n_ctx == 8 and tiny.class_tokens.shape == (19, 5)  # 13 - 5 for the EVA config
    words = "a photo of a small clean road near".split()  # 8 context words, one token each
    ids = enc.tokenize([" ".join(words)], 13)[0, 1:1 + n_ctx]
    with torch.no_grad():
        original = tiny.contexts.clone()
        tiny.contexts.copy_(enc.text.token_embedding(ids)[None])
        got = tiny.class_text_embeddings()
        tiny.contexts.copy_(original)
    want = enc.encode_tokens(enc.tokenize([" ".join(words) + " " + c for c in tiny.config.class_names], 13),
                             normalize=False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_context_gradients_and_gamma_init():
    torch.manual_seed(0)
    small = create_method("tqdm", scale="miniature")
    assert torch.all(small.gamma == 1e-4)
    ref = create_method("tqdm", scale="miniature", gamma_init="reference")
    assert ref.gamma.std() > 0.3 and ref.gamma.abs().max() <= 2.0  # trunc_normal, std 1, cut at +-2
    assert small.contexts.abs().max() <= 2.0 and small.contexts.std() > 0.3
    small.train()
    images, labels = _batch()
    losses = small.training_step(images, labels)
    sum(losses.values()).backward()
    for name in ("contexts", "gamma", "query_mlp.0.weight", "context_decoder.out_proj.1.weight",
                 "decode_head.pixel_decoder.text_proj.weight", "neck.fpn1.0.weight",
                 "backbone.vit.blocks.0.mlp.fc2.weight"):
        assert small.get_parameter(name).grad is not None, name
    assert all(p.grad is None for p in small.text_encoder.parameters())
    assert all(p.grad is None for p in small.reg_E0.parameters())


# ----------------------------------------------------------------------------------------------- reg_E0
def test_frozen_initial_copy_vision_loss_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    method = create_method("tqdm", scale="miniature")
    method.train()
    assert not method.reg_E0.training and not method.text_encoder.training and method.backbone.training
    assert not any(p.requires_grad for p in method.reg_E0.parameters())
    images, labels = _batch()
    losses = method.training_step(images, labels)
    assert losses["loss_reg_vision"].item() < 1e-10  # the copy equals the encoder

    recipe = tqdm_recipe("gta5", "miniature").replace(warmup_iters=0, lr=1e-2)
    optimizer = build_optimizer(method, recipe)
    grouped = {n for g in optimizer.param_groups for n in g["names"]}
    assert not any(n.startswith(("reg_E0.", "text_encoder.")) for n in grouped)
    copy_before = {k: v.clone() for k, v in method.reg_E0.state_dict().items()}
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    after = method.training_step(images, labels)
    assert after["loss_reg_vision"].item() > 1e-8
    assert all(torch.equal(v, method.reg_E0.state_dict()[k]) for k, v in copy_before.items())

    ckpt = method.checkpoint_state_dict()
    assert ckpt and not any(k.startswith(("reg_E0.", "text_encoder.")) for k in ckpt)
    assert {"contexts", "gamma", "neck.fpn1.1.running_mean"} <= set(ckpt)
    torch.save(ckpt, tmp_path / "model.pt")
    fresh = create_method("tqdm", scale="miniature")
    report = fresh.load_checkpoint(tmp_path / "model.pt")
    assert report.ok(), report.summary()
    assert torch.equal(fresh.gamma, method.gamma)
    # reg_E0 keeps the *initial* encoder, not the trained one
    assert not torch.equal(fresh.reg_E0.vit.blocks[0].mlp.fc2.weight, method.backbone.vit.blocks[0].mlp.fc2.weight)


def test_official_file_loads_both_towers_and_rebuilds_the_frozen_copy(tmp_path):
    from methods.backbones.checkpoints import synthetic_official_state_dict

    torch.manual_seed(0)
    method = create_method("tqdm", scale="miniature")
    cfg = method.config
    sd = {k: v for k, v in synthetic_official_state_dict(cfg.vit, "eva_clip", file_grid=8).items()
          if not k.startswith("text.")}  # 8x8 grid at patch 16 = 128 px: resized to the model's 4x4
    text = create_method("tqdm", scale="miniature").text_encoder  # another random text tower
    with torch.no_grad():
        for p in text.parameters():
            p.normal_()
    sd.update({k: v.clone() for k, v in text.state_dict().items()})  # EVA-CLIP layout: text.*
    torch.save(sd, tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt")
    report = method.load_official(tmp_path / "EVA02_CLIP_L_336_psz14_s6B.pt")
    assert report.ok(), report.summary()
    assert torch.equal(method.backbone.proj.weight, sd["visual.head.weight"])
    assert torch.equal(method.text_encoder.text.text_projection, text.text.text_projection)
    for k, v in method.backbone.state_dict().items():
        assert torch.equal(method.reg_E0.state_dict()[k], v), k
    assert not any(p.requires_grad for p in method.reg_E0.parameters()) and not method.reg_E0.training
    method.train()
    assert not method.reg_E0.training
    assert method.training_step(*_batch())["loss_reg_vision"].item() < 1e-10


def test_reference_mode_of_the_frozen_copy_follows_train():
    method = create_method("tqdm", scale="miniature", reg_copy_train_mode=True)
    method.train()
    assert method.reg_E0.training and not any(p.requires_grad for p in method.reg_E0.parameters())
    method.eval()
    assert not method.reg_E0.training


# ----------------------------------------------------------------------------------------------- optimizer
def test_param_groups_follow_mmcv_custom_keys(tiny):
    def groups(source):
        out = {}
        for g in tiny.param_groups(tqdm_recipe(source, "paper")):
            for n in g["names"]:
                out[n] = (g["lr"], g["weight_decay"])
        return out

    g = groups("gta5")
    assert not any(n.startswith("text_encoder.") or n.startswith("reg_E0.") for n in g)
    assert g["backbone.vit.blocks.0.mlp.fc2.weight"] == pytest.approx((1e-6, 1e-4))
    assert g["backbone.vit.blocks.0.norm1.weight"] == pytest.approx((1e-6, 1e-4))  # 'backbone' wins over 'norm'
    assert g["neck.fpn1.0.weight"] == pytest.approx((1e-6, 1e-4))  # the FPN is part of the backbone there
    assert g["decode_head.layers.0.norms.0.weight"] == pytest.approx((1e-5, 0.0))
    assert g["decode_head.pixel_decoder.input_convs.0.1.weight"] == pytest.approx((1e-5, 1e-4))  # GN 'gn'
    assert g["context_decoder.decoder.0.norm1.weight"] == pytest.approx((1e-5, 0.0))
    assert g["context_decoder.memory_proj.0.weight"] == pytest.approx((1e-5, 1e-4))
    assert g["contexts"] == pytest.approx((1e-5, 1e-4)) and g["gamma"] == pytest.approx((1e-5, 1e-4))
    assert g["decode_head.query_embed.weight"] == pytest.approx((1e-5, 1e-4))
    c = groups("cityscapes")
    assert c["decode_head.query_embed.weight"] == pytest.approx((1e-4, 0.0))
    assert c["decode_head.level_embed"] == pytest.approx((1e-4, 0.0))
    assert c["decode_head.pixel_decoder.level_embed"] == pytest.approx((1e-4, 1e-5))  # 'level_encoding' there
    assert c["backbone.vit.blocks.0.mlp.fc2.weight"] == pytest.approx((1e-5, 1e-5))


def test_paper_recipe():
    r = get_method_class("tqdm").recipe(source="gta5")
    assert (r.iterations, r.batch_size, r.lr, r.weight_decay, r.min_lr, r.warmup_iters) == (20000, 8, 1e-5, 1e-4,
                                                                                           1e-6, 1500)
    assert r.gta_split == "train" and r.eval_variant == "tqdm" and r.power == 0.9 and r.warmup_ratio == 1e-6
    assert r.augmentation["ratio_range"] == (0.5, 2.0) and r.augmentation["base_size"] is None
    assert r.crop_size == (512, 512) and r.augmentation["cat_max_ratio"] == 0.75
    assert r.rare_class_sampling == {"class_temp": 100.0, "min_pixels": 3000, "min_crop_ratio": 0.5}
    assert get_method_class("tqdm").recipe(source="gta5", scale="miniature").rare_class_sampling is None
    c = get_method_class("tqdm").recipe(source="cityscapes")
    assert (c.lr, c.weight_decay) == (1e-4, 1e-5)
    with pytest.raises(ValueError, match="no recipe"):
        tqdm_recipe("mapillary")


# ----------------------------------------------------------------------------------------------- checkpoints
def _ref_head(sd, cfg, text_dim):
    """Keys and shapes of tqdm's mmdet-2.x head (tqdmHead + tqdmMSDeformAttnPixelDecoder) at ``cfg``'s sizes."""
    d, f_pix, f_dec = cfg.hidden_dim, cfg.pixel_decoder_ffn, cfg.decoder_ffn
    heads, levels, points = cfg.num_heads, cfg.num_feature_levels, cfg.deform_points
    g = torch.Generator().manual_seed(1)

    def put(name, *shape):
        sd["decode_head." + name] = torch.randn(*shape, generator=g)

    def mha(prefix):
        put(prefix + "in_proj_weight", 3 * d, d), put(prefix + "in_proj_bias", 3 * d)
        put(prefix + "out_proj.weight", d, d), put(prefix + "out_proj.bias", d)

    def ffn(prefix, hidden):
        put(prefix + "layers.0.0.weight", hidden, d), put(prefix + "layers.0.0.bias", hidden)
        put(prefix + "layers.1.weight", d, hidden), put(prefix + "layers.1.bias", d)

    def norm(prefix):
        put(prefix + "weight", d), put(prefix + "bias", d)

    pd = "pixel_decoder."
    for i, c in enumerate(list(cfg.in_channels[-levels:])[::-1]):
        put(f"{pd}input_convs.{i}.conv.weight", d, c, 1, 1), put(f"{pd}input_convs.{i}.conv.bias", d)
        norm(f"{pd}input_convs.{i}.gn.")
    for i in range(cfg.pixel_decoder_layers):
        p = f"{pd}encoder.layers.{i}."
        put(p + "attentions.0.sampling_offsets.weight", heads * levels * points * 2, d)
        put(p + "attentions.0.sampling_offsets.bias", heads * levels * points * 2)
        put(p + "attentions.0.attention_weights.weight", heads * levels * points, d)
        put(p + "attentions.0.attention_weights.bias", heads * levels * points)
        for lin in ("value_proj", "output_proj"):
            put(p + f"attentions.0.{lin}.weight", d, d), put(p + f"attentions.0.{lin}.bias", d)
        mha(p + "attentions.1.attn.")
        ffn(p + "ffns.0.", f_pix)
        for k in range(3):
            norm(p + f"norms.{k}.")
    norm(f"{pd}encoder.post_norm.")
    put(f"{pd}level_encoding.weight", levels, d)
    put(f"{pd}lateral_convs.0.conv.weight", d, cfg.in_channels[0], 1, 1), norm(f"{pd}lateral_convs.0.gn.")
    put(f"{pd}output_convs.0.conv.weight", d, d, 3, 3), norm(f"{pd}output_convs.0.gn.")
    put(f"{pd}mask_feature.weight", d, d, 1, 1), put(f"{pd}mask_feature.bias", d)
    put(f"{pd}text_proj.weight", d, text_dim), put(f"{pd}text_proj.bias", d)
    put(f"{pd}text_pos_embed.weight", 19, d)
    for i in range(cfg.decoder_layers):
        p = f"transformer_decoder.layers.{i}."
        mha(p + "attentions.0.attn."), mha(p + "attentions.1.attn.")
        ffn(p + "ffns.0.", f_dec)
        for k in range(3):
            norm(p + f"norms.{k}.")
    norm("transformer_decoder.post_norm.")
    put("query_embed.weight", 19, d), put("level_embed.weight", levels, d)
    put("cls_embed.weight", 20, d), put("cls_embed.bias", 20)
    for k in (0, 2, 4):
        put(f"mask_embed.{k}.weight", d, d), put(f"mask_embed.{k}.bias", d)
    put("text_proj.0.weight", d, text_dim), put("text_proj.0.bias", d)
    put("text_proj.2.weight", d, d), put("text_proj.2.bias", d)


def _ref_text_and_context(sd, method):
    """``text_encoder.*`` (CLIP text tower names), ``contexts``, ``gamma``, ``context_decoder.*``."""
    tc, cc = method.config.text, method.config.context_decoder
    w, e, wd = tc.width, tc.embed_dim, cc.width
    g = torch.Generator().manual_seed(2)

    def put(name, *shape):
        sd[name] = torch.randn(*shape, generator=g)

    put("text_encoder.token_embedding.weight", tc.vocab_size, w)
    put("text_encoder.positional_embedding", tc.context_length, w)
    for i in range(tc.layers):
        p = f"text_encoder.transformer.resblocks.{i}."
        for ln in ("ln_1", "ln_2"):
            put(p + ln + ".weight", w), put(p + ln + ".bias", w)
        put(p + "attn.in_proj_weight", 3 * w, w), put(p + "attn.in_proj_bias", 3 * w)
        put(p + "attn.out_proj.weight", w, w), put(p + "attn.out_proj.bias", w)
        put(p + "mlp.c_fc.weight", 4 * w, w), put(p + "mlp.c_fc.bias", 4 * w)
        put(p + "mlp.c_proj.weight", w, 4 * w), put(p + "mlp.c_proj.bias", w)
    put("text_encoder.ln_final.weight", w), put("text_encoder.ln_final.bias", w)
    put("text_encoder.text_projection", w, e)
    put("contexts", 1, tc.context_length - 5, w)
    put("gamma", e)
    p = "context_decoder."
    for name, dim in (("memory_proj.0", e), ("memory_proj.2", wd), ("text_proj.0", e), ("out_proj.0", wd)):
        put(p + name + ".weight", dim), put(p + name + ".bias", dim)
    put(p + "memory_proj.1.weight", wd, e), put(p + "memory_proj.1.bias", wd)
    put(p + "text_proj.1.weight", wd, e), put(p + "text_proj.1.bias", wd)
    put(p + "out_proj.1.weight", e, wd), put(p + "out_proj.1.bias", e)
    for i in range(cc.layers):
        q = f"{p}decoder.{i}."
        for attn in ("self_attn", "cross_attn"):
            for lin in ("q_proj", "k_proj", "v_proj"):
                put(q + f"{attn}.{lin}.weight", wd, wd)
            put(q + f"{attn}.proj.weight", wd, wd), put(q + f"{attn}.proj.bias", wd)
        for k in (1, 2, 3):
            put(q + f"norm{k}.weight", wd), put(q + f"norm{k}.bias", wd)
        put(q + "mlp.0.weight", 4 * wd, wd), put(q + "mlp.0.bias", 4 * wd)
        put(q + "mlp.3.weight", wd, 4 * wd), put(q + "mlp.3.bias", wd)


def _ref_fpn(sd, dim):
    g = torch.Generator().manual_seed(3)
    for name, shape in (("fpn1.0.weight", (dim, dim, 2, 2)), ("fpn1.0.bias", (dim,)), ("fpn1.1.weight", (dim,)),
                        ("fpn1.1.bias", (dim,)), ("fpn1.1.running_mean", (dim,)), ("fpn1.1.running_var", (dim,)),
                        ("fpn1.3.weight", (dim, dim, 2, 2)), ("fpn1.3.bias", (dim,)),
                        ("fpn2.0.weight", (dim, dim, 2, 2)), ("fpn2.0.bias", (dim,))):
        sd["backbone." + name] = torch.rand(*shape, generator=g)
    sd["backbone.fpn1.1.num_batches_tracked"] = torch.tensor(123)


@pytest.mark.parametrize("backbone,layout", [("eva02_clip_vitl14", "eva_clip"), ("clip_vitb16", "openai_clip")])
def test_reference_checkpoint_loads_with_no_missing_or_unexpected_keys(tmp_path, backbone, layout):
    from methods.backbones.checkpoints import synthetic_official_state_dict

    torch.manual_seed(0)
    method = create_method("tqdm", backbone, scale="miniature")
    cfg = method.config
    official = synthetic_official_state_dict(cfg.vit, layout, file_grid=cfg.vit.grid_size[0])
    sd = {"backbone." + k[len("visual."):]: v for k, v in official.items() if k.startswith("visual.")}
    sd.update({"reg_E0." + k[len("backbone."):]: v.clone() for k, v in sd.items()})
    _ref_fpn(sd, cfg.vit.embed_dim)
    _ref_text_and_context(sd, method)
    _ref_head(sd, cfg.head, cfg.text.embed_dim)
    path = tmp_path / "tqdm_released.pth"
    torch.save({"meta": {"iter": 20000}, "state_dict": sd, "optimizer": {}}, path)

    report = method.load_checkpoint(path, strict=True)
    assert report.missing == [] and report.unexpected == [], report.summary()
    assert any(k.startswith("reg_E0.") for k in report.ignored)
    own = method.state_dict()
    d = "decode_head."
    pairs = {
        d + "transformer_decoder.layers.1.attentions.0.attn.in_proj_weight": d + "layers.1.cross_attn.in_proj_weight",
        d + "transformer_decoder.layers.1.attentions.1.attn.out_proj.bias": d + "layers.1.self_attn.out_proj.bias",
        d + "transformer_decoder.layers.0.ffns.0.layers.1.weight": d + "layers.0.ffn.2.weight",
        d + "transformer_decoder.post_norm.weight": d + "decoder_norm.weight",
        d + "pixel_decoder.encoder.layers.1.attentions.1.attn.in_proj_weight":
            d + "pixel_decoder.layers.1.text_attn.in_proj_weight",
        d + "pixel_decoder.encoder.layers.0.norms.1.bias": d + "pixel_decoder.layers.0.text_norm.bias",
        d + "pixel_decoder.encoder.post_norm.weight": d + "pixel_decoder.layers.1.post_norm.weight",
        d + "pixel_decoder.level_encoding.weight": d + "pixel_decoder.level_embed",
        d + "pixel_decoder.input_convs.2.gn.bias": d + "pixel_decoder.input_convs.2.1.bias",
        d + "level_embed.weight": d + "level_embed",
        d + "cls_embed.weight": d + "class_predictor.weight",
        d + "text_proj.2.weight": "query_mlp.2.weight",
        "backbone.fpn2.0.weight": "neck.fpn2.weight",
        "backbone.fpn1.3.bias": "neck.fpn1.3.bias",
        "text_encoder.text_projection": "text_encoder.text.text_projection",
        "context_decoder.decoder.2.cross_attn.k_proj.weight": "context_decoder.decoder.2.cross_attn.k_proj.weight",
        "contexts": "contexts",
    }
    for ref_key, own_key in pairs.items():
        assert torch.equal(own[own_key], sd[ref_key]), (ref_key, own_key)
    if layout == "eva_clip":
        assert torch.equal(own["backbone.proj.weight"], sd["backbone.head.weight"])
        assert torch.equal(own["backbone.vit.blocks.0.attn.q_proj.bias"], sd["backbone.blocks.0.attn.q_bias"])
    else:
        assert torch.equal(own["backbone.proj.weight"], sd["backbone.proj"].t())
        assert torch.equal(own["backbone.vit.cls_token"].flatten(), sd["backbone.class_embedding"])
    # the frozen copy is not taken from the file (it is rebuilt from the official weights)
    assert not torch.equal(method.reg_E0.vit.pos_embed, method.backbone.vit.pos_embed)
    method.eval()
    with torch.no_grad():
        assert torch.isfinite(method.predict(torch.rand(1, 3, 64, 64) * 255)).all()


def test_reference_clip_class_embedding_quirk_option():
    method = create_method("tqdm", "clip_vitb16", scale="miniature", clip_double_class_embedding=True)
    state = {"backbone.class_embedding": torch.ones(64), "backbone.fpn1.0.bias": torch.zeros(64)}
    out, notes, _ = convert_reference_checkpoint(state, method.config)
    assert torch.equal(out["backbone.vit.cls_token"], torch.full((1, 1, 64), 2.0)) and any("x2" in n for n in notes)


def test_head_key_mapping_leaves_unknown_keys_unmapped():
    assert tqdm_head_key("conv_seg.weight", 6) is None
    post_norm = "decode_head.pixel_decoder.layers.5.post_norm.bias"
    assert tqdm_head_key("pixel_decoder.encoder.post_norm.bias", 6) == post_norm
    # standard parts come from the shared mmcv-1.x mapping, tqdm's additions from tqdm_head_key
    assert tqdm_head_key("pixel_decoder.encoder.layers.2.norms.1.weight", 6) == \
        "decode_head.pixel_decoder.layers.2.text_norm.weight"
    assert tqdm_head_key("pixel_decoder.encoder.layers.2.norms.2.weight", 6) == \
        "decode_head.pixel_decoder.layers.2.norm2.weight"
    assert tqdm_head_key("transformer_decoder.layers.3.attentions.1.attn.in_proj_bias", 6) == \
        "decode_head.layers.3.self_attn.in_proj_bias"
    assert tqdm_head_key("text_proj.0.bias", 6) == "query_mlp.0.bias"


# ----------------------------------------------------------------------------------------------- real scale
def test_dry_run_real_scale_parameter_counts(capsys):
    assert run_main(["--method", "tqdm", "--protocol", "gta2cbm", "--dry-run"]) == 0
    spec = json.loads(capsys.readouterr().out)
    p = spec["params"]
    counts = {k: (v["total"], v["trainable"]) for k, v in p["per_module"].items()}
    assert counts == {
        "backbone": (305_170_112, 305_170_112),  # EVA02-CLIP-L/14 at 512 (36x36 pos-embed) + 1024->768 head
        "reg_E0": (305_170_112, 0),  # frozen initial copy
        "neck": (12_588_032, 12_588_032),  # simple FPN (3 deconvs 1024x1024x2x2 + BN)
        "text_encoder": (123_601_152, 0),  # EVA02-CLIP-L text tower, 13 positions
        "contexts": (6_144, 6_144),  # 8 x 768
        "gamma": (768, 768),
        "context_decoder": (3_750_912, 3_750_912),
        "query_mlp": (262_656, 262_656),
        "decode_head": (25_455_060, 25_455_060),
    }
    assert (p["total"], p["trainable"]) == (776_004_948, 347_233_684)
    assert spec["model"]["head"]["num_queries"] == 19 and spec["model"]["head"]["pixel_decoder_ffn"] == 2048
    assert spec["model"]["text"]["context_length"] == 13 and spec["recipe"]["gta_split"] == "train"
    assert spec["pretrained_files"] == ["EVA02_CLIP_L_336_psz14_s6B.pt"]


def test_clip_b_real_scale_on_meta():
    cls = get_method_class("tqdm")
    with torch.device("meta"):
        method = cls(cls.default_config("clip_vitb16"))
    p = method.parameter_summary()
    assert method.contexts.shape == (1, 5, 512) and method.gamma.shape == (512,)
    assert p["per_module"]["backbone"]["trainable"] == 86_828_544 and p["per_module"]["reg_E0"]["trainable"] == 0
    assert p["per_module"]["text_encoder"] == {"total": 63_393_792, "trainable": 0}
    assert (p["total"], p["trainable"]) == (273_013_204, 122_790_868)
