"""Parity with the official implementations: fixtures written by ``python -m tests.parity.generate`` from the
official code (tests/parity/fixtures/*.json: key names, seeds and output summaries, no weights and no code).

Each test builds this project's module at the fixture's tiny sizes, loads the official-format state dict
regenerated from the fixture's key names through the project's own loaders (``Method.load_checkpoint`` or
the checkpoint converter the method uses), feeds the same seeded inputs and compares the outputs:
tolerance 1e-5 relative for the token modules, 1e-4 through the Mask2Former head (README "Fidelity / parity
tests").
"""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
import torch.nn.functional as F

from methods.heads.mask2former import Mask2FormerConfig, Mask2FormerHead, semantic_inference
from methods.heads.mmdet_keys import convert_mmdet_head
from methods.registry import get_method_class
from methods.rein import Rein
from methods.set import SET
from methods.vireo import GeoTextTokens
from methods.tqdm import language_regularization, pixel_text_score_map, vision_language_regularization, vision_regularization
from tests.parity.common import fixed_points, load_fixture, official_weights, parity_error, seeded, seeded_labels

TOKEN_RTOL = 1e-5
HEAD_RTOL = 1e-4


def head_config(fx: dict) -> Mask2FormerConfig:
    h = fx["head"]
    return Mask2FormerConfig(
        in_channels=(h["channels"],) * 4, hidden_dim=h["hidden"], num_queries=h["queries"], num_classes=h["classes"],
        num_heads=h["heads"], pixel_decoder_layers=h["pd_layers"], pixel_decoder_ffn=h["pd_ffn"],
        deform_points=h["points"], decoder_layers=h["dec_layers"], decoder_ffn=h["dec_ffn"], train_num_points=64)


def token_inputs(fx: dict) -> list[torch.Tensor]:
    """The generator's per-layer token inputs [B, 1 + N, C] (same names, shapes and seed)."""
    (h, w), t = fx["image"], fx["tokens"]
    n = (h // t["patch_size"]) * (w // t["patch_size"])
    return [seeded(f"tokens.{i}", (fx["batch"], 1 + n, t["embed_dims"]), fx["seed"]) for i in range(t["num_layers"])]


def head_inputs(fx: dict) -> list[torch.Tensor]:
    h, w = fx["image"]
    return [seeded(f"feature.{s}", (fx["batch"], fx["head"]["channels"], h // s, w // s), fx["seed"])
            for s in (4, 8, 16, 32)]


def check(errors: dict[str, float], fx: dict, got: dict[str, torch.Tensor], rtol: float) -> None:
    for name, tensor in got.items():
        errors[name] = parity_error(tensor, fx["outputs"][name])
    bad = {k: v for k, v in errors.items() if v > rtol}
    assert not bad, f"{fx['method']}: outputs differ from {fx['official_repo']} (max rel. error): {bad}"


def head_outputs(head: Mask2FormerHead, fx: dict, **queries) -> dict[str, torch.Tensor]:
    """All prediction sets and the final semantic logits (mmseg ``predict``: masks upsampled to the input)."""
    out = head(head_inputs(fx), **queries)
    sets = out["aux_outputs"] + [{"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]}]
    got = {f"set{i}.cls": s["pred_logits"] for i, s in enumerate(sets)}
    got.update({f"set{i}.mask": s["pred_masks"] for i, s in enumerate(sets)})
    got["semantic_logits"] = semantic_inference(out["pred_logits"], out["pred_masks"], tuple(fx["image"]))
    return got


def rein_family_model(cls, fx: dict, full: bool = False, **fields):
    """A tiny ``cls`` (Rein or SET) at the fixture's sizes, with the official state loaded through
    ``load_checkpoint``; only the backbone may be missing (``full``: the fixture has it too)."""
    t = fx["tokens"]
    cfg = cls.default_config(scale="miniature")
    assert (cfg.vit.depth, cfg.vit.embed_dim, cfg.vit.patch_size) == (t["num_layers"], t["embed_dims"],
                                                                      t["patch_size"])
    cfg.head = dataclasses.replace(head_config(fx), in_channels=(cfg.vit.embed_dim,) * 4)
    cfg.token_length, cfg.lora_dim = t["token_length"], t["lora_dim"]
    for k, v in fields.items():
        setattr(cfg, k, v)
    model = cls(cfg).eval()
    report = model.load_checkpoint(official_weights(fx["keys"], fx["seed"]))
    if full:
        assert report.ok(), report.summary()
    else:
        assert report.unexpected == [] and all(k.startswith("backbone.") for k in report.missing), report.summary()
    return model


@torch.no_grad()
def test_rein_tokens_queries_and_head_match_official():
    fx = load_fixture("rein")
    model = rein_family_model(Rein, fx)
    got = {f"tokens.layer{i}": model.reins(x, i) for i, x in enumerate(token_inputs(fx))}
    got["queries"] = model.reins.queries()
    errors: dict[str, float] = {}
    check(errors, fx, got, TOKEN_RTOL)
    check(errors, fx, head_outputs(model.decode_head, fx, **model.head_queries()), HEAD_RTOL)


@torch.no_grad()
def test_whole_rein_model_matches_official():
    """DINOv2 + Rein tokens + head, loaded from one official-format "full weights" state dict through
    ``load_checkpoint``; ``predict`` gives mmseg's semantic logits at the input size."""
    fx = load_fixture("rein_model")
    model = rein_family_model(Rein, fx, full=True)
    assert tuple(model.config.image_mean) == tuple(fx["image_mean"]) and tuple(model.config.image_std) == tuple(
        fx["image_std"])
    image = 120 + 60 * seeded("image", (fx["batch"], 3, *fx["model_image"]), fx["seed"])
    got = {f"features.{i}": f for i, f in enumerate(model.extract_features(image))}
    got.update(queries=model.reins.queries(), semantic_logits=model.predict(image))
    check({}, fx, got, HEAD_RTOL)


def test_rein_learning_rate_and_weight_decay_per_parameter_match_official():
    """Every trainable parameter's weight decay and learning rate at iterations 0 .. 39,999 of the GTA5 recipe
    against mmengine running Rein's own config and optimizer constructor. Official names map to ours through
    ``convert_checkpoint``. mmengine's PolyLR reaches 0 at the last iteration, (1 - it / (T - 1))^0.9: the recipe's
    ``poly_convention="mmengine"`` (mmcv's (1 - it / T)^0.9 would be off by up to 7.3e-5 x the base LR)."""
    from runners.train import build_optimizer, lr_factor

    fx = load_fixture("rein_lr")
    model = rein_family_model(Rein, load_fixture("rein")).train()
    recipe = Rein.recipe(source="gta5", scale="paper")
    groups = {name: g for g in build_optimizer(model, recipe).param_groups for name in g["names"]}
    official = list(fx["lr"])
    ours = {int(i): name for name, i in model.convert_checkpoint(
        {k: torch.tensor(i) for i, k in enumerate(official)}).items()}
    assert sorted(ours.values()) == sorted(groups), "the trainable parameters differ"
    for i, name in enumerate(official):
        group = groups[ours[i]]
        assert group["weight_decay"] == pytest.approx(fx["weight_decay"][name], abs=1e-12), name
        for it, lr in fx["lr"][name].items():
            assert lr_factor(recipe, int(it), group["initial_lr"]) == pytest.approx(lr, rel=1e-5, abs=1e-12), \
                (name, it)


@torch.no_grad()
def test_set_tokens_queries_and_head_match_official_released_fft():
    fx = load_fixture("set")
    model = rein_family_model(SET, fx, fft_axes="batch_channel")
    got = {f"tokens.layer{i}": model.reins(x, i) for i, x in enumerate(token_inputs(fx))}
    got["queries"] = model.reins.queries()
    errors: dict[str, float] = {}
    check(errors, fx, got, TOKEN_RTOL)
    check(errors, fx, head_outputs(model.decode_head, fx, **model.head_queries()), HEAD_RTOL)


def vireo_conversion(state: dict) -> dict:
    """Official Vireo names -> ours, through ``Vireo.convert_checkpoint``. The mapping reads no model state when
    the checkpoint has no backbone weights, so it runs on an empty instance (building a Vireo is slow)."""
    cls = get_method_class("vireo")
    empty = cls.__new__(cls)
    torch.nn.Module.__init__(empty)
    return empty.convert_checkpoint(state)


@torch.no_grad()
def test_vireo_head_dqcm_prior_text_classes_and_predict_match_official():
    """Vireo's head through ``Vireo.forward_head`` and ``predict`` (backbones replaced by seeded maps and
    queries): DQCM residual, CMPE prior and anchors added to the query positions, text classification."""
    from methods.vireo import CoarseMaskPrior, DynamicQueryCorrection, TextClassifier, Vireo

    fx = load_fixture("vireo_head")
    h, seed, b = fx["vireo_head"], fx["seed"], fx["batch"]
    k, p, e = fx["text_features_shape"]
    cfg = dataclasses.replace(head_config(fx), in_channels=(h["channels"],) * 4, hidden_dim=h["hidden"],
                              num_heads=h["heads"], num_queries=h["queries"], num_classes=k - 1,
                              mask_loss_on_points=False)
    head = Mask2FormerHead(cfg).eval()  # assembled as Vireo.__init__ does
    head.remove_learned_queries()
    head.querys2feat = torch.nn.Linear(cfg.hidden_dim, cfg.hidden_dim)
    head.dqcm = DynamicQueryCorrection(h["channels"], 4, 16)
    head.prior = CoarseMaskPrior(h["channels"], e, p, cfg.hidden_dim, cfg.num_queries)
    head.class_predictor = TextClassifier(cfg.hidden_dim, e, p, k)
    converted = vireo_conversion(official_weights(fx["keys"], seed))
    missing, unexpected = head.load_state_dict(
        {key[len("decode_head."):]: v for key, v in converted.items() if key.startswith("decode_head.")}, strict=False)
    assert not unexpected and [m for m in missing if not m.startswith("criterion.")] == [
        "class_predictor.text_features"], (missing, unexpected)
    head.class_predictor.set_text_features(seeded("head_text_features", (k, p, e), seed))
    size = tuple(h["image"])
    feats = [seeded(f"vireo_feature.{s}", (b, h["channels"], size[0] // s, size[1] // s), seed)
             for s in (4, 8, 16, 32)]
    queries = seeded("vireo_queries", (h["queries"], h["hidden"]), seed)
    model = types.SimpleNamespace(ensure_text_embeddings=lambda: None, extract_features=lambda images: list(feats),
                                  decode_head=head, reins=types.SimpleNamespace(queries=lambda: queries))
    images = torch.zeros(b, 3, *size)
    out = Vireo.forward_head(model, images)
    model.forward_head = lambda images: out  # for predict
    sets = out["aux_outputs"] + [{"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]}]
    got = {f"set{i}.cls": s["pred_logits"] for i, s in enumerate(sets)}
    got.update({f"set{i}.mask": s["pred_masks"] for i, s in enumerate(sets)})
    got.update(mask_prior=out["mask_prior"], semantic_logits=Vireo.predict(model, images))
    check({}, fx, got, HEAD_RTOL)


@torch.no_grad()
def test_vireo_geotext_tokens_match_official():
    fx = load_fixture("vireo")
    t = fx["tokens"]
    k, _, text_dim = fx["text_features_shape"]
    tokens = GeoTextTokens(t["num_layers"], t["embed_dims"], text_dim=text_dim, num_texts=k,
                           token_length=t["token_length"], lora_dim=t["lora_dim"], patch_size=t["patch_size"],
                           query_dim=t["query_dims"]).eval()
    converted = vireo_conversion(official_weights(fx["keys"], fx["seed"]))
    missing, unexpected = tokens.load_state_dict({k[len("reins."):]: v for k, v in converted.items()}, strict=False)
    assert not unexpected and missing == ["text_features"], (missing, unexpected)
    per_template = seeded("text_features", tuple(fx["text_features_shape"]), fx["seed"])
    tokens.set_text_features(F.normalize(F.normalize(per_template, dim=-1).mean(dim=1), dim=-1))
    (h, w), n = fx["image"], 0
    n = (h // t["patch_size"]) * (w // t["patch_size"])
    got = {}
    for i, x in enumerate(token_inputs(fx)):
        depth = seeded(f"depth.{i}", (fx["batch"], 1 + n + 5, t["embed_dims"]), fx["seed"])
        got[f"tokens.layer{i}"] = tokens(x, i, depth[:, 1:])
    got["queries"] = tokens.queries()
    check({}, fx, got, TOKEN_RTOL)


@torch.no_grad()
def test_tqdm_head_textual_queries_and_predict_match_official():
    """tqdm's head (text cross-attention in the pixel decoder, 19 textual queries from ``query_mlp``) loaded
    through ``load_checkpoint``; ``Tqdm.predict`` combines at 1/4 and resizes, as tqdm's own code does."""
    fx = load_fixture("tqdm_head")
    h = fx["tqdm_head"]
    model = get_method_class("tqdm")(get_method_class("tqdm").default_config(scale="miniature")).eval()
    cfg = model.config.head
    assert (cfg.in_channels[0], cfg.hidden_dim, cfg.num_heads, cfg.pixel_decoder_layers, cfg.pixel_decoder_ffn,
            cfg.deform_points, cfg.decoder_layers, cfg.decoder_ffn, cfg.text_cross_attention_dim) == (
        h["channels"], h["hidden"], h["heads"], h["pd_layers"], h["pd_ffn"], h["points"], h["dec_layers"],
        h["dec_ffn"], h["text_dim"])
    report = model.load_checkpoint(official_weights(fx["keys"], fx["seed"]))
    assert report.unexpected == [] and not [k for k in report.missing if k.startswith(("decode_head.", "query_mlp."))]
    feats = [seeded(f"feature.{s}", (fx["batch"], h["channels"], fx["image"][0] // s, fx["image"][1] // s),
                    fx["seed"]) for s in (4, 8, 16, 32)]
    texts = seeded("texts", (fx["batch"], 19, h["text_dim"]), fx["seed"])
    out = model.decode_head(feats, query_content=model.query_mlp(texts), text_context=texts)
    sets = out["aux_outputs"] + [{"pred_logits": out["pred_logits"], "pred_masks": out["pred_masks"]}]
    got = {f"set{i}.cls": s["pred_logits"] for i, s in enumerate(sets)}
    got.update({f"set{i}.mask": s["pred_masks"] for i, s in enumerate(sets)})
    model.forward_features = lambda images, score_map=True: out  # the head outputs above, for predict
    got["semantic_logits"] = model.predict(torch.zeros(fx["batch"], 3, *fx["image"]))
    check({}, fx, got, HEAD_RTOL)


@torch.no_grad()
def test_tqdm_text_side_and_regularizers_match_official():
    """ContextDecoder + gamma (official names, through ``load_checkpoint``), the pixel-text score map and the
    three regularizers on the same seeded embeddings and labels. The official VL loss averages over all
    pixels, ignored ones included (``average="all"``)."""
    fx = load_fixture("tqdm_text")
    t = fx["tqdm_text"]
    model = get_method_class("tqdm")(get_method_class("tqdm").default_config(scale="miniature")).eval()
    c = model.config.context_decoder
    assert (model.config.vit.proj_dim, c.width, c.heads, c.layers) == (t["text_dim"], t["width"], t["heads"],
                                                                        t["layers"])
    report = model.load_checkpoint(official_weights(fx["keys"], fx["seed"]))
    assert report.unexpected == [] and not [k for k in report.missing if k.startswith(("context_decoder.", "gamma"))]
    e, k, (h, w), b, seed = t["text_dim"], 19, fx["image"], fx["batch"], fx["seed"]
    text = seeded("text_embeddings", (k, e), seed)  # [K, E]: the frozen encoder's class embeddings
    global_feat = seeded("global_feat", (b, 1, e), seed)
    dense = seeded("dense", (b, e, h // 16, w // 16), seed)
    refined = model.refine_text(text, torch.cat([global_feat, dense.flatten(2).transpose(1, 2)], dim=1))
    score_map = pixel_text_score_map(dense, refined)
    labels = seeded_labels((b, 1, h, w), k, seed, ignore_rows=h // 4)[:, 0]
    got = {
        "text_embeddings": refined, "score_map": score_map,
        "reg.textual.loss": language_regularization(refined, seeded("frozen_prompts", (k, e), seed)).reshape(1),
        "reg.visual.loss": vision_regularization(global_feat[:, 0], seeded("global_feat_init", (b, 1, e), seed)[:, 0]
                                                 ).reshape(1),
        "scr_map.loss_seg": vision_language_regularization(score_map / model.config.tau, labels, average="all"
                                                           ).reshape(1),
    }
    check({}, fx, got, TOKEN_RTOL)


@torch.no_grad()
def test_famix_network_matches_official():
    """CLIP ResNet (OS 16, FAMix's dilation pattern) + DeepLabv3+ at the official decoder widths, loaded from an
    official ``{"model_state": ...}`` checkpoint through ``load_checkpoint``; eval-mode logits."""
    fx = load_fixture("famix")
    cls = get_method_class("famix")
    cfg = cls.default_config(scale="miniature")
    cfg.resnet = r = dataclasses.replace(cfg.resnet, layers=tuple(fx["famix"]["layers"]))
    assert (r.width, r.embed_dim, r.image_size) == (fx["famix"]["width"], fx["famix"]["embed_dim"],
                                                    fx["famix"]["image_size"])
    cfg.head = dataclasses.replace(cfg.head, aspp_channels=256, low_level_proj=48, decoder_channels=256)
    model = cls(cfg).eval()
    report = model.load_checkpoint({"model_state": official_weights(fx["keys"], fx["seed"]), "cur_itrs": 0})
    assert report.missing == [] and report.unexpected == [], report.summary()
    image = 120 + 60 * seeded("image", (fx["batch"], 3, *fx["image"]), fx["seed"])
    check({}, fx, {"logits": model.predict(image)}, HEAD_RTOL)


@torch.no_grad()
def test_famix_style_mixing_matches_official(monkeypatch):
    """Patch-wise style mixing of a 256-channel 192x192 layer1 map: per-patch statistics, the class bank (empty
    classes fall back to 255), mixing weights s [B, C, 1, 1], ReLU."""
    from methods import famix as famix_module

    fx = load_fixture("famix")
    b, seed = fx["batch"], fx["seed"]
    model = get_method_class("famix")(get_method_class("famix").default_config(scale="miniature"))
    model.set_style_bank(famix_module.StyleBank.from_entries(
        {c: [(seeded(f"bank_mu.{c}", (256, 1, 1), seed), 0.5 + seeded(f"bank_std.{c}", (256, 1, 1), seed).abs())]
         for c in fx["bank_classes"]}, channels=256))
    s = torch.rand((b, 256, 1, 1), generator=torch.Generator().manual_seed(seed))
    monkeypatch.setattr(famix_module, "sample_mixing_weights", lambda shape, *a, **k: s)
    labels = torch.zeros(b, 768, 768, dtype=torch.long)  # each 256x256 cell is one class: its majority
    for p, per_image in enumerate(fx["patch_classes"]):
        r, c = divmod(p, 3)
        for i, cls_id in enumerate(per_image):
            labels[i, 256 * r:256 * (r + 1), 256 * c:256 * (c + 1)] = cls_id
    low = 2 + seeded("low_level", (b, 256, 192, 192), seed)
    check({}, fx, {"mixed_low_level": model.mix_styles(low, labels)}, TOKEN_RTOL)


@torch.no_grad()
def test_mask2former_head_with_learned_queries_matches_mmseg():
    fx = load_fixture("mask2former_head")
    head = Mask2FormerHead(head_config(fx)).eval()
    conversion = convert_mmdet_head(official_weights(fx["keys"], fx["seed"]))
    assert not conversion.unmatched, sorted(conversion.unmatched)
    missing, unexpected = head.load_state_dict({k[len("decode_head."):]: v for k, v in conversion.tensors.items()},
                                               strict=False)
    assert not unexpected and not [k for k in missing if not k.startswith("criterion.")], missing
    check({}, fx, head_outputs(head, fx), HEAD_RTOL)


@torch.no_grad()
def test_vltseg_head_loaded_through_load_checkpoint_matches_mmseg():
    """VLTSeg's head is mmseg's own Mask2FormerHead: the same fixture, loaded through ``VLTSeg.load_checkpoint``."""
    fx = load_fixture("mask2former_head")
    cls = get_method_class("vltseg")
    cfg = cls.default_config(scale="miniature")
    cfg.head = dataclasses.replace(head_config(fx), in_channels=cfg.head.in_channels)
    assert cfg.head.in_channels == (fx["head"]["channels"],) * 4
    model = cls(cfg).eval()
    report = model.load_checkpoint(official_weights(fx["keys"], fx["seed"]))
    assert report.unexpected == [] and all(k.startswith(("backbone.", "neck.")) for k in report.missing), \
        report.summary()
    check({}, fx, head_outputs(model.decode_head, fx), HEAD_RTOL)


def test_mask2former_losses_on_fixed_points_match_mmdet(monkeypatch):
    """Hungarian matching + class / mask BCE / Dice losses of all prediction sets, with the random point
    samples of the matcher and of the losses replaced by the same fixed points on both sides."""
    from methods.heads import criterion as criterion_module
    from methods.heads import matcher as matcher_module

    fx = load_fixture("mask2former_head")
    cfg = dataclasses.replace(head_config(fx), train_num_points=fx["head"]["points_for_loss"])
    head = Mask2FormerHead(cfg).eval()
    conversion = convert_mmdet_head(official_weights(fx["keys"], fx["seed"]))
    head.load_state_dict({k[len("decode_head."):]: v for k, v in conversion.tensors.items()}, strict=False)
    points, seed = cfg.train_num_points, fx["seed"]
    match_points = fixed_points("match", 1, points, seed)[0]
    loss_points = fixed_points("loss", 64, points, seed)

    class FixedRandTorch:
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def rand(*args, **kwargs):
            return match_points.clone()

    num_sets = cfg.decoder_layers + 1
    monkeypatch.setattr(matcher_module, "torch", FixedRandTorch())
    monkeypatch.setattr(criterion_module, "uncertain_point_coords",  # the same rows for every set, as mmdet's
                        lambda src, *a, **k: loss_points[:src.shape[0] // num_sets].repeat(num_sets, 1, 1))
    labels = seeded_labels((fx["batch"], *fx["image"]), len(fx["loss_classes"]), seed,
                           ignore_rows=fx["image"][0] // 8, classes=fx["loss_classes"])
    losses = head.losses(head(head_inputs(fx)), labels)
    check({}, fx, {k: v.detach().reshape(1) for k, v in losses.items()}, HEAD_RTOL)


@pytest.mark.parametrize("name", ["rein", "rein_model", "rein_lr", "set", "vireo", "vireo_head", "tqdm_head",
                                  "tqdm_text", "famix", "mask2former_head"])
def test_fixtures_name_their_source(name):
    fx = load_fixture(name)
    assert fx["official_repo"] and (fx["keys"] and fx["outputs"] or fx.get("lr"))
    assert len(fx["official_commit"]) == 40 or fx["official_commit"].startswith("mmsegmentation==")
