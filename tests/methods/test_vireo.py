"""Vireo (methods/vireo.py): the depth/visual gate, the text-context token update, CMPE (prior loss, anchors,
template convolution), the text classifier, open-vocabulary class swap, official checkpoints, the real-scale
parameter counts and a small overfit run."""

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from methods.backbones.text import CLIPTextEncoder, text_config
from methods.heads.mmdet_keys import mmdet_mask2former_template, synthetic_state_dict
from methods.rein import rein_recipe, rein_reference_template
from methods.vireo import (
    GEOTEXT_REFERENCE_PARAMS,
    VIREO_CLASS_NAMES,
    VIREO_SELECT_TEMPLATES,
    CoarseMaskPrior,
    DynamicQueryCorrection,
    GeoTextTokens,
    TextClassifier,
    Vireo,
    class_template_embeddings,
    coarse_prior_loss,
    resample_tokens,
    vireo_recipe,
)

SELECT = VIREO_SELECT_TEMPLATES[:2]
HEAD = ("a photo of a {}.", "a bad photo of the {}.", "itap of a {}.")


def tiny_vireo(**fields) -> Vireo:
    """DINOv2-tiny + DA-V2-tiny (4 blocks, width 64), tiny text tower (32-d), 8 queries, 2/3 templates."""
    cfg = Vireo.default_config(scale="miniature", backbone_templates=SELECT, head_templates=HEAD)
    cfg.head = dataclasses.replace(cfg.head, hidden_dim=32, num_queries=8, num_heads=2, pixel_decoder_layers=1,
                                   pixel_decoder_ffn=32, decoder_layers=2, decoder_ffn=32, train_num_points=64)
    cfg.token_length = 8
    for k, v in fields.items():
        setattr(cfg, k, v)
    return Vireo(cfg)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return tiny_vireo()


def _batch(size=64, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g) * 255
    labels = torch.randint(0, 19, (batch, size, size), generator=g)
    labels[:, : size // 8] = 255
    return images, labels


# ------------------------------------------------------------------------------------------ GeoText tokens
def _geotext(C=6, m=4, r=2, E=5, K=3, seed=0) -> GeoTextTokens:
    torch.manual_seed(seed)
    mod = GeoTextTokens(1, C, token_length=m, lora_dim=r, text_dim=E, num_texts=K, link_to_query=False).double()
    with torch.no_grad():  # make every term visible
        mod.scale.fill_(0.7)
        for p in (mod.learnable_tokens_a, mod.learnable_tokens_b):
            p.copy_(torch.randn_like(p))
    mod.set_text_features(F.normalize(torch.randn(K, E, dtype=torch.float64), dim=-1))
    return mod


def _reference_update(f, d, T, text, Wt, bt, W1, b1, W2, b2, w, alpha):
    """Vireo's update element by element: t = Wt text + bt; T' = T + softmax_K(T t^T) t (no scaling);
    g = sigmoid(w); S = softmax_m([g f.T' + (1-g) d.T'] / sqrt(C)); token 0 dropped;
    dbar = sum_{m>=1} S_m (W1 T'_m + b1); dF = W2 (dbar + f) + b2; f' = f + alpha dF."""
    c, n_tok = len(T[0]), len(T)
    t = [[sum(Wt[i][k] * tx[k] for k in range(len(tx))) + bt[i] for i in range(c)] for tx in text]
    Tc = []
    for tok in T:
        lg = [sum(tok[k] * tj[k] for k in range(c)) for tj in t]
        ex = [math.exp(v - max(lg)) for v in lg]
        s = [e / sum(ex) for e in ex]
        Tc.append([tok[i] + sum(s[j] * t[j][i] for j in range(len(t))) for i in range(c)])
    g = 1 / (1 + math.exp(-w))
    out = []
    for fv, dv in zip(f, d):
        lg = [(g * sum(fv[k] * Tc[mm][k] for k in range(c)) + (1 - g) * sum(dv[k] * Tc[mm][k] for k in range(c)))
              / math.sqrt(c) for mm in range(n_tok)]
        ex = [math.exp(v - max(lg)) for v in lg]
        s = [e / sum(ex) for e in ex]
        t2f = [[sum(W1[i][k] * Tc[mm][k] for k in range(c)) + b1[i] for i in range(c)] for mm in range(n_tok)]
        dbar = [sum(s[mm] * t2f[mm][i] for mm in range(1, n_tok)) for i in range(c)]
        z = [dbar[i] + fv[i] for i in range(c)]
        dF = [sum(W2[i][k] * z[k] for k in range(c)) + b2[i] for i in range(c)]
        out.append([fv[i] + alpha * dF[i] for i in range(c)])
    return torch.tensor(out, dtype=torch.float64)


def test_single_layer_geotext_update_matches_hand_computation():
    mod = _geotext()
    with torch.no_grad():
        mod.fusion_weights[0].fill_(0.3)
    x = torch.randn(1, 1 + 5, 6, dtype=torch.float64)  # class token + 5 patch tokens
    d = torch.randn(1, 5, 6, dtype=torch.float64)
    out = mod(x, 0, d)
    args = [mod.get_tokens(0).tolist(), mod.text_features.tolist(), mod.text_embed.weight.tolist(),
            mod.text_embed.bias.tolist(), mod.mlp_token2feat.weight.tolist(), mod.mlp_token2feat.bias.tolist(),
            mod.mlp_delta_f.weight.tolist(), mod.mlp_delta_f.bias.tolist(), 0.3, 0.7]
    expected = _reference_update(x[0, 1:].tolist(), d[0].tolist(), *args)
    assert torch.equal(out[:, 0], x[:, 0])  # the class token passes unchanged
    torch.testing.assert_close(out[0, 1:], expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="Depth-Anything"):
        mod(x, 0)


def test_gate_extremes_ignore_depth_or_visual():
    mod = _geotext()
    f, f2 = torch.randn(2, 5, 6, dtype=torch.float64), torch.randn(2, 5, 6, dtype=torch.float64)
    d, d2 = torch.randn(2, 5, 6, dtype=torch.float64), torch.randn(2, 5, 6, dtype=torch.float64)
    tokens = mod.condition_tokens(mod.get_tokens(0))
    with torch.no_grad():
        mod.fusion_weights[0].fill_(float("inf"))  # sigmoid(w) = 1: depth ignored
    assert mod.gate(0).item() == 1.0
    torch.testing.assert_close(mod.attention_logits(f, tokens, 0, d), f @ tokens.t() / math.sqrt(6))
    torch.testing.assert_close(mod(f, 0, d, 0), mod(f, 0, d2, 0))
    # ... which is exactly Rein's update with the text-conditioned tokens
    rein_attn = torch.softmax(f @ tokens.t() / math.sqrt(6), dim=-1)
    rein_delta = mod.mlp_delta_f(rein_attn[..., 1:] @ mod.mlp_token2feat(tokens[1:]) + f)
    torch.testing.assert_close(mod(f, 0, d, 0), f + rein_delta * mod.scale)
    with torch.no_grad():
        mod.fusion_weights[0].fill_(float("-inf"))  # sigmoid(w) = 0: visual logits ignored
    assert mod.gate(0).item() == 0.0
    torch.testing.assert_close(mod.attention_logits(f, tokens, 0, d), d @ tokens.t() / math.sqrt(6))
    torch.testing.assert_close(mod.attention_logits(f, tokens, 0, d), mod.attention_logits(f2, tokens, 0, d))
    # the attention (hence the update apart from the "+ f" residual term) follows the depth tokens
    assert not torch.allclose(mod(f, 0, d, 0), mod(f, 0, d2, 0))


def test_gate_init_and_depth_resampling():
    mod = GeoTextTokens(3, 16, token_length=5, lora_dim=4, text_dim=8, num_texts=4)
    assert [w.item() for w in mod.fusion_weights] == [0.5, 0.5, 0.5]  # w_i = 0.5 (reference tensor(0.5))
    assert mod.gate(1).item() == pytest.approx(1 / (1 + math.exp(-0.5)))  # so the gate starts at 0.6225
    x = torch.tensor([[[0.0], [1.0]]])  # [B, N=2, C=1] -> 4 tokens, linear, align_corners=False
    torch.testing.assert_close(resample_tokens(x, 4)[0, :, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert resample_tokens(x, 2) is x
    f, d = torch.randn(1, 6, 16), torch.randn(1, 3, 16)  # 3 depth tokens for 6 features: resampled
    tokens = mod.get_tokens(0)
    g = mod.gate(0)
    expected = (g * f @ tokens.t() + (1 - g) * resample_tokens(d, 6) @ tokens.t()) / 4.0
    torch.testing.assert_close(mod.attention_logits(f, tokens, 0, d), expected)


def test_text_context_token_update_and_raw_query_link():
    torch.manual_seed(0)
    mod = GeoTextTokens(2, 8, token_length=4, lora_dim=2, text_dim=5, num_texts=3, query_dim=6)
    mod.set_text_features(torch.randn(3, 5))
    T = mod.get_tokens(1)
    t = mod.text_embed(mod.text_features)
    expected = T + torch.softmax(T @ t.t(), dim=-1) @ t  # no 1/sqrt(C)
    torch.testing.assert_close(mod.condition_tokens(T), expected)
    assert not torch.allclose(mod.condition_tokens(T), T + torch.softmax(T @ t.t() / math.sqrt(8), -1) @ t)
    # the per-layer update uses T', the query link the raw tokens (reference return_auto)
    torch.testing.assert_close(mod.queries(), mod.link(mod.get_tokens(-1)))
    # any number of texts (open vocabulary)
    mod.set_text_features(torch.randn(7, 5))
    assert mod.condition_tokens(T).shape == T.shape
    with pytest.raises(ValueError, match="text features"):
        mod.set_text_features(torch.randn(3, 4))


# ------------------------------------------------------------------------------------------ head modules
def test_prior_loss_hand_computed_with_ignore():
    prior = torch.tensor([[[[2.0, -1.0], [0.5, 0.0]],
                           [[-3.0, 1.0], [0.0, 4.0]],
                           [[0.0, 0.0], [1.0, -2.0]]]])  # [1, 3, 2, 2]
    labels = torch.tensor([[[0, 9, 2, 9], [9, 9, 9, 9], [255, 9, 1, 9], [9, 9, 9, 9]]])  # nearest -> [[0,2],[255,1]]
    loss = coarse_prior_loss(prior, labels)
    kept = [((0, 0), 0), ((0, 1), 2), ((1, 1), 1)]  # the ignore pixel (1, 0) is left out

    def bce(z, y):
        return -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))

    expected = sum(bce(prior[0, t, i, j].item(), float(t == c)) for (i, j), c in kept for t in range(3)) / (3 * 3)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    everything_ignored = torch.full_like(labels, 255)
    z = prior.clone().requires_grad_()
    zero = coarse_prior_loss(z, everything_ignored)
    assert zero.item() == 0.0 and zero.requires_grad


def test_training_step_weights_the_prior_by_0_1(tiny):
    images, labels = _batch(size=32)
    model = tiny.train()
    torch.manual_seed(1)
    losses = model.training_step(images, labels)
    assert set(losses) == {"loss_cls", "loss_mask", "loss_dice", "loss_prior"}
    with torch.no_grad():
        prior = model.forward_head(images)["mask_prior"]
    assert prior.shape == (2, 19, 8, 8)  # 19 classes (no background) at stride 4
    assert model.config.prior_loss_weight == 0.1
    torch.testing.assert_close(losses["loss_prior"].detach(), 0.1 * coarse_prior_loss(prior, labels))


def _class_loss_by_hand(logits, classes, no_object_weight=0.1, class_weight=2.0, norm="queries"):
    """Per set: sum over (image, query) of w_y * -log softmax(logits)_y, divided by B*Q ("queries", mmdet's
    CrossEntropyLoss without avg_factor) or by sum of w_y ("class_weights"); summed over sets, times 2."""
    total = 0.0
    for set_logits, set_classes in zip(logits, classes):
        num, den = 0.0, 0.0
        for row_logits, row_classes in zip(set_logits.tolist(), set_classes):
            for lg, y in zip(row_logits, row_classes):
                w = no_object_weight if y == len(lg) - 1 else 1.0
                log_z = math.log(sum(math.exp(v) for v in lg))
                num += w * (log_z - lg[y])
                den += 1.0 if norm == "queries" else w
        total += num / den
    return class_weight * total


def test_class_loss_averages_over_batch_and_queries_like_the_reference(tiny):
    """Vireo's head (vireo_mask2former.py:355) calls the class loss without avg_factor: the mean over
    batch x queries of the class-weighted CE; Rein's (mmdet) divides by the sum of the class weights."""
    g = torch.Generator().manual_seed(3)
    num_classes, queries, batch = 19, 5, 2
    logits = torch.randn(2, batch, queries, num_classes + 1, generator=g, dtype=torch.float64)  # 2 sets
    masks = torch.randn(2, batch, queries, 4, 4, generator=g)
    targets = [{"labels": torch.tensor([3, 7]), "masks": torch.ones(2, 4, 4)},
               {"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4)}]
    matches = [(torch.tensor([1, 4]), torch.tensor([0, 1])), (torch.tensor([2]), torch.tensor([0]))]
    outputs = {"pred_logits": logits[1], "pred_masks": masks[1],
               "aux_outputs": [{"pred_logits": logits[0], "pred_masks": masks[0]}]}
    classes = []
    for _ in range(2):
        per_image = []
        for (q, _), t in zip(matches, targets):
            row = [num_classes] * queries
            for qi, label in zip(q.tolist(), t["labels"].tolist()):
                row[qi] = label
            per_image.append(row)
        classes.append(per_image)
    flat = [logits[s].reshape(-1, num_classes + 1) for s in range(2)]
    flat_classes = [[c for row in per_image for c in row] for per_image in classes]

    criterion = copy.deepcopy(tiny.decode_head.criterion)
    criterion.matcher = lambda *_: matches * 2  # fixed matching for both sets
    assert criterion.class_loss_norm == "queries"
    got = criterion(outputs, targets)["loss_cls"].item()
    expected = _class_loss_by_hand([f[None] for f in flat], [[fc] for fc in flat_classes])
    assert got == pytest.approx(expected, rel=1e-6)
    criterion.class_loss_norm = "class_weights"  # Rein's normalisation: several times larger
    rein_value = criterion(outputs, targets)["loss_cls"].item()
    assert rein_value == pytest.approx(_class_loss_by_hand([f[None] for f in flat], [[fc] for fc in flat_classes],
                                                           norm="class_weights"), rel=1e-6)
    assert rein_value > 2 * got


def test_coarse_logits_fold_the_template_conv_exactly():
    torch.manual_seed(0)
    prior = CoarseMaskPrior(in_channels=12, text_dim=5, num_templates=4, query_dim=6, num_queries=3).double()
    feats = torch.randn(2, 12, 7, 6, dtype=torch.float64)
    text = F.normalize(torch.randn(19, 4, 5, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(prior.coarse_logits(feats, text), prior.coarse_logits_reference_order(feats, text))
    coarse, anchors = prior(feats, text)
    assert coarse.shape == (2, 19, 7, 6) and anchors.shape == (2, 3, 6)
    # anchors by hand: softmax over pixels of sigmoid(prior) pools the features, softmax over the classes
    w = coarse.sigmoid().flatten(2).softmax(-1)
    emb = prior.query_proj(torch.einsum("btn,bcn->btc", w, feats.flatten(2)))
    attn = torch.einsum("bte,qe->btq", emb, prior.prototypes).softmax(dim=1)
    torch.testing.assert_close(anchors, torch.einsum("btq,bte->bqe", attn, emb))


def test_dqcm_shared_gate_and_fusion():
    torch.manual_seed(0)
    dq = DynamicQueryCorrection(8, num_levels=4, reduction=4)
    feats = [torch.randn(1, 8, 8 // s, 8 // s) for s in (1, 2, 4, 8)]
    out = dq(feats)
    assert out.shape == (1, 8, 8, 8)
    gated = []
    for f in feats:
        x = F.interpolate(f, size=(8, 8), mode="bilinear", align_corners=False)
        x = x * torch.sigmoid(dq.gate.channel[2](torch.relu(dq.gate.channel[0](x))))  # per-pixel channel gate
        gated.append(x * torch.sigmoid(dq.gate.spatial(x)))
    torch.testing.assert_close(out, dq.fuse(torch.cat(gated, 1)))


def test_text_classifier_and_background_as_no_object():
    torch.manual_seed(0)
    clf = TextClassifier(hidden_dim=6, text_dim=5, num_templates=3, num_texts=4)
    assert clf.bias.abs().sum() == 0
    text = torch.randn(4, 3, 5)
    clf.set_text_features(text)
    x = torch.randn(2, 7, 6)
    mean = F.normalize(F.normalize(text, dim=-1).mean(1), dim=-1)
    torch.testing.assert_close(clf(x), (x @ clf.weight.t() + clf.bias) @ mean.t())  # no temperature
    assert clf(x).shape == (2, 7, 4)


def test_queries_get_prior_anchors_on_the_positional_embedding(tiny):
    model = tiny.eval()
    images, _ = _batch(size=32)
    captured = {}
    head = model.decode_head
    original = head.forward

    def spy(features, **kwargs):
        captured.update(kwargs)
        return original(features, **kwargs)

    head.forward = spy
    try:
        with torch.no_grad():
            model.forward_head(images)
    finally:
        del head.forward
    with torch.no_grad():
        feats = model.extract_features(images)
        fused = feats[0] + head.dqcm(feats)
        _, anchors = head.prior(fused, head.class_predictor.text_features[:-1])
        expected = model.reins.queries()[None] + anchors
    torch.testing.assert_close(captured["query_pos"], expected)
    torch.testing.assert_close(captured["query_content"], head.querys2feat(expected))


# ------------------------------------------------------------------------------------------ text / open vocab
def test_class_embeddings_split_like_the_reference_and_trim_exactly(tiny):
    enc = tiny.text_encoder()
    a = class_template_embeddings(enc, ["car", "person with clothes,people,human"], HEAD)
    torch.testing.assert_close(a, enc.encode_templates(["car", "person with clothes,people,human"], HEAD))
    b = class_template_embeddings(enc, ["car, automobile"], HEAD)  # ", " splits; parts averaged per template
    parts = enc.encode_templates(["car", "automobile"], HEAD)
    torch.testing.assert_close(b[0], F.normalize(parts.mean(0), dim=-1))
    assert VIREO_CLASS_NAMES[11] == "person with clothes,people,human" and len(VIREO_CLASS_NAMES) == 19
    assert len(VIREO_SELECT_TEMPLATES) == 32


def test_open_vocabulary_class_swap(tiny):
    model = tiny.eval()
    try:
        _class_swap(model)
    finally:
        model.set_class_names(VIREO_CLASS_NAMES)


def _class_swap(model):
    before = (model.reins.text_features.clone(), model.decode_head.class_predictor.text_features.clone())
    assert before[0].shape == (20, 32) and before[1].shape == (20, 3, 32)
    names = ["car", "tree", "sky"]
    model.set_class_names(names)
    enc = model.text_encoder()
    expect_head = class_template_embeddings(enc, names + ["background"], HEAD)
    expect_backbone = F.normalize(class_template_embeddings(enc, names + ["background"], SELECT).mean(1), dim=-1)
    torch.testing.assert_close(model.decode_head.class_predictor.text_features, expect_head)
    torch.testing.assert_close(model.reins.text_features, expect_backbone)
    images, labels = _batch(size=32)
    with torch.no_grad():
        scores = model.predict(images)
    assert scores.shape == (2, 3, 32, 32) and torch.isfinite(scores).all()
    with pytest.raises(RuntimeError, match="set_class_names"):
        model.training_step(images, labels)
    model.set_class_names(VIREO_CLASS_NAMES)  # back to the 19 training classes
    torch.testing.assert_close(model.reins.text_features, before[0])
    torch.testing.assert_close(model.decode_head.class_predictor.text_features, before[1])
    with torch.no_grad():
        assert model.predict(images).shape == (2, 19, 32, 32)


def test_text_tower_is_not_model_state_and_clip_file_loads(tmp_path, tiny):
    names = {n for n, _ in tiny.named_parameters()} | set(tiny.state_dict())
    assert not any("text_encoder" in n or n.startswith("text.") or "_text_tower" in n for n in names)
    keys = tiny.checkpoint_state_dict().keys()
    assert {"reins.text_features", "decode_head.class_predictor.text_features"} <= set(keys)
    assert not any(k.startswith(("backbone.", "depth_backbone.")) for k in keys)
    # an OpenAI-layout file (top-level text keys) for the tiny tower: the embeddings are recomputed from it
    torch.manual_seed(5)
    tower = CLIPTextEncoder(text_config("tiny"))
    path = tmp_path / "ViT-tiny.pt"
    torch.save({k[len("text."):]: v for k, v in tower.state_dict().items()}, path)
    model = tiny_vireo()
    old = model.reins.text_features.clone()
    report = model.load_text_official(path)
    assert report.missing == [] and report.unexpected == []
    with torch.no_grad():
        model.eval().predict(_batch(size=32)[0])  # first use embeds with the loaded tower
    new = model.reins.text_features
    assert not torch.allclose(new, old)
    names = [*VIREO_CLASS_NAMES, "background"]
    torch.testing.assert_close(new, F.normalize(class_template_embeddings(tower, names, SELECT).mean(1), dim=-1))


# ------------------------------------------------------------------------------------------ training
def test_frozen_backbones_trainable_tokens_and_head(tiny):
    model = tiny.train()
    assert not model.backbone.training and not model.depth_backbone.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith(("reins.", "decode_head.")) for n in trainable)
    assert not any(p.requires_grad for p in model.depth_backbone.parameters())
    model.zero_grad()
    losses = model.training_step(*_batch(size=32))
    sum(losses.values()).backward()
    assert model.reins.learnable_tokens_a.grad[0].abs().sum() > 0
    for p in (model.reins.fusion_weights[0], model.reins.fusion_weights[3], model.reins.text_embed.weight,
              model.decode_head.dqcm.fuse.weight, model.decode_head.prior.prototypes,
              model.decode_head.prior.template_conv.weight, model.decode_head.class_predictor.weight,
              model.decode_head.querys2feat.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.depth_backbone.parameters())
    model.zero_grad()


def test_overfit_a_fixed_batch(region_batch, overfit):
    torch.manual_seed(0)
    model = tiny_vireo().train()
    recipe = vireo_recipe("miniature", lr=1e-2)
    opt = torch.optim.AdamW(model.param_groups(recipe), lr=recipe.lr, weight_decay=recipe.weight_decay)
    images, labels = region_batch
    history = [h["total"] for h in overfit(model, opt, images, labels, 16)]
    assert min(history[-4:]) < 0.75 * history[0], history


def test_recipes_and_weight_decay_rules(tiny):
    gta, city = Vireo.recipe(source="gta5"), Vireo.recipe(source="cityscapes")
    rein = rein_recipe("paper")
    assert (gta.iterations, gta.batch_size, gta.lr, gta.weight_decay, gta.crop_size, gta.grad_clip) == \
        (40000, 4, 1e-4, 0.05, (512, 512), None)
    assert gta.augmentation == rein.augmentation and gta.gta_split == "all" and gta.eval_variant == "rein"
    assert city.grad_clip == 0.1 and city.crop_size == (512, 512) and city.lr == 1e-4 and city.eval_variant == "rein"
    assert "vireo_dinov2_mask2former_512x512_bs1x4_citys.py" in city.source
    assert Vireo.recipe(source="gta5", scale="miniature").iterations < 1000
    with pytest.raises(ValueError, match="sources"):
        Vireo.recipe(source="synthia")
    decay = {n: g["decay_mult"] for g in tiny.param_groups(gta) for n in g["names"]}
    assert decay["reins.learnable_tokens_a"] == decay["reins.scale"] == decay["decode_head.level_embed"] == 0.0
    assert decay["reins.fusion_weights.0"] == decay["reins.text_embed.weight"] == 1.0
    assert decay["decode_head.prior.prototypes"] == decay["decode_head.dqcm.fuse.weight"] == 1.0


# ------------------------------------------------------------------------------------------ checkpoints
def _official_vireo_state(model: Vireo, seed: int = 3) -> dict:
    cfg = model.config
    C, D, E = cfg.vit.embed_dim, cfg.head.hidden_dim, model.reins.text_dim
    red, P = C // cfg.gate_reduction, len(cfg.head_templates)
    t = mmdet_mask2former_template(cfg.head, query_tables=False)
    t["decode_head.cls_embed.weight"], t["decode_head.cls_embed.bias"] = (E, D), (E,)  # Linear 256 -> 768
    t.update({"decode_head.querys2feat.weight": (D, D), "decode_head.querys2feat.bias": (D,)})
    t.update(rein_reference_template(cfg.vit.depth, C, token_length=cfg.token_length, lora_dim=cfg.lora_dim,
                                     query_dim=D, prefix="backbone.vireo."))
    t.update({"backbone.vireo.text_embed.weight": (C, E), "backbone.vireo.text_embed.bias": (C,)})
    t.update({f"backbone.vireo.fusion_weights.{i}": () for i in range(cfg.vit.depth)})
    g = "decode_head.DQCM."
    t.update({g + "attention_gate.channel_attention.0.weight": (red, C, 1, 1),
              g + "attention_gate.channel_attention.0.bias": (red,),
              g + "attention_gate.channel_attention.2.weight": (C, red, 1, 1),
              g + "attention_gate.channel_attention.2.bias": (C,),
              g + "attention_gate.spatial_attention.weight": (1, C, 3, 3),
              g + "attention_gate.spatial_attention.bias": (1,),
              g + "linear_fuse.weight": (C, 4 * C, 1, 1), g + "linear_fuse.bias": (C,)})
    p = "decode_head.prior."
    t.update({p + "feat_proj.weight": (E, C, 1, 1), p + "feat_proj.bias": (E,), p + "coarse_embed.weight": (1, P, 3, 3),
              p + "coarse_embed.bias": (1,), p + "query_proj.weight": (D, C), p + "query_proj.bias": (D,),
              p + "query_proto": (cfg.head.num_queries, D)})
    t.update({"decode_head.feat_conv.weight": (D, D, 1, 1), "decode_head.feat_conv.bias": (D,),
              "decode_head.out_conv.weight": (1, D, 1, 1), "decode_head.out_conv.bias": (1,)})
    return synthetic_state_dict(t, seed=seed)


def test_official_checkpoint_loads_into_the_right_tensors(tmp_path):
    torch.manual_seed(0)
    model = tiny_vireo()
    text_before = model.reins.text_features.clone()
    sd = _official_vireo_state(model)
    path = tmp_path / "vireo_dinov2_mask2former_512x512_bs1x4.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": sd}, path)
    report = model.load_checkpoint(path)
    assert report.missing == [] and report.unexpected == [], report.summary()
    assert sorted(report.ignored) == sorted(k for k in sd if k.startswith(("decode_head.feat_conv",
                                                                             "decode_head.out_conv")))
    eq = torch.equal
    assert eq(model.reins.learnable_tokens_b, sd["backbone.vireo.learnable_tokens_b"])
    assert eq(model.reins.link.merge.weight, sd["backbone.vireo.merge.weight"])
    assert eq(model.reins.text_embed.weight, sd["backbone.vireo.text_embed.weight"])
    assert eq(model.reins.fusion_weights[2], sd["backbone.vireo.fusion_weights.2"])
    assert eq(model.decode_head.class_predictor.weight, sd["decode_head.cls_embed.weight"])
    assert eq(model.decode_head.querys2feat.bias, sd["decode_head.querys2feat.bias"])
    gate = "decode_head.DQCM.attention_gate."
    assert eq(model.decode_head.dqcm.gate.channel[2].weight, sd[gate + "channel_attention.2.weight"])
    assert eq(model.decode_head.dqcm.gate.spatial.bias, sd[gate + "spatial_attention.bias"])
    assert eq(model.decode_head.dqcm.fuse.weight, sd["decode_head.DQCM.linear_fuse.weight"])
    assert eq(model.decode_head.prior.template_conv.weight, sd["decode_head.prior.coarse_embed.weight"])
    assert eq(model.decode_head.prior.prototypes, sd["decode_head.prior.query_proto"])
    assert eq(model.decode_head.layers[1].cross_attn.in_proj_weight,
              sd["decode_head.transformer_decoder.layers.1.cross_attn.attn.in_proj_weight"])
    torch.testing.assert_close(model.reins.text_features, text_before)  # text comes from the CLIP tower
    # our own checkpoints round-trip (text included)
    own = model.checkpoint_state_dict()
    fresh = tiny_vireo(text_init_seed=7)
    rep = fresh.load_checkpoint(own)
    assert rep.ok() and torch.equal(fresh.reins.text_features, model.reins.text_features)
    assert torch.equal(fresh.decode_head.prior.feat_proj.weight, model.decode_head.prior.feat_proj.weight)
    # a full-weights file: the DA-V2 encoder under backbone.depth_anything.* goes to depth_backbone
    from methods.backbones.checkpoints import synthetic_official_state_dict

    depth = synthetic_official_state_dict(model.config.depth_vit, "depth_anything_v2", file_patch=16, seed=4)
    full = {**sd, **{"backbone.depth_anything." + k: v for k, v in depth.items()}}
    rep = tiny_vireo().load_checkpoint(full)
    assert rep.missing == [] and rep.unexpected == [], rep.summary()
    assert any(k.startswith("backbone.depth_anything.depth_head.") for k in rep.ignored)


# ------------------------------------------------------------------------------------------ real scale
def test_real_scale_parameter_counts_on_meta():
    with torch.device("meta"):
        model = Vireo(Vireo.default_config())
    counts = model.parameter_summary()["per_module"]
    assert counts["reins"] == {"total": GEOTEXT_REFERENCE_PARAMS, "trainable": GEOTEXT_REFERENCE_PARAMS}
    assert GEOTEXT_REFERENCE_PARAMS == 3_777_561 == 2_990_081 + (768 * 1024 + 1024) + 24
    assert counts["backbone"] == counts["depth_backbone"] == {"total": 304_198_656, "trainable": 0}
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    head = model.decode_head
    assert n(head.dqcm) == 4_336_705 and n(head.prior) == 1_075_921 and n(head.class_predictor) == 256 * 768 + 768
    assert counts["decode_head"]["trainable"] == 20_579_796 - (256 * 20 + 20) + 197_376 + 4_336_705 + 1_075_921
    cfg = model.config
    assert (cfg.vit.patch_size, cfg.vit.img_size, cfg.vit.taps, cfg.head.num_queries) == (16, 512, (7, 11, 15, 23), 100)
    assert cfg.depth_vit.taps == tuple(range(24)) and cfg.depth_vit.weights_file == "depth_anything_v2_vitl.pth"
    assert cfg.depth_vit.frozen and cfg.vit.frozen and not cfg.head.mask_loss_on_points
    assert (len(cfg.backbone_templates), len(cfg.head_templates), cfg.text) == (32, 80, "ViT-L-14-336")
    assert model.reins.text_features.shape == (20, 768)
    assert head.class_predictor.text_features.shape == (20, 80, 768)
    assert sorted(model.pretrained_loaders()) == ["ViT-L-14-336px.pt", "depth_anything_v2_vitl.pth",
                                                  "dinov2_vitl14_pretrain.pth"]


def test_dry_run_prints_exact_counts(capsys):
    from runners.run import main

    assert main(["--method", "vireo", "--protocol", "gta2cbm", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    params = out["params"]
    assert params["per_module"]["reins"]["trainable"] == 3_777_561
    assert params["trainable"] == 29_962_219 and params["total"] == 638_359_531
    assert out["recipe"]["eval_variant"] == "rein" and out["recipe"]["grad_clip"] is None


# ------------------------------------------------------------------------------------------ runner smoke


@pytest.mark.slow
def test_runner_trains_and_evaluates_two_iterations(run_tiny_cell):
    """``runners.run.main`` end to end on the miniature benchmark (2 iterations; 1 image per eval split)."""
    record = run_tiny_cell("vireo", "gta2cbm")
    assert set(record["results"]["targets"]) == {"cityscapes", "bdd100k", "mapillary"}
