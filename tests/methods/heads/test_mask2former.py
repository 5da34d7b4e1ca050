"""The Mask2Former head end to end (tiny CPU config) and its real-scale parameter count."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.heads import FixedMatcher, Mask2FormerConfig, Mask2FormerHead, semantic_inference

TINY = Mask2FormerConfig(
    in_channels=(16, 16, 16, 16), hidden_dim=32, num_heads=2, num_queries=8, num_classes=5,
    pixel_decoder_layers=1, pixel_decoder_ffn=64, deform_points=2, decoder_layers=3, decoder_ffn=64,
    train_num_points=256,
)


def features(batch=2, size=64, channels=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, size // s, size // s, generator=g) for s in (4, 8, 16, 32)]


def make_head(cfg=TINY, **kw):
    torch.manual_seed(0)
    return Mask2FormerHead(cfg, **kw)


def test_forward_shapes_and_deep_supervision_sets():
    head = make_head()
    out = head(features())
    assert out["pred_logits"].shape == (2, 8, 6)
    assert out["pred_masks"].shape == (2, 8, 16, 16)
    assert len(out["aux_outputs"]) == TINY.decoder_layers  # + final = decoder_layers + 1 sets
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, 8, 6) and aux["pred_masks"].shape == (2, 8, 16, 16)
    scores = semantic_inference(out["pred_logits"], out["pred_masks"])
    assert scores.shape == (2, 5, 16, 16)
    torch.testing.assert_close(head.predict(features()), scores)
    torch.testing.assert_close(head.predict(features(), size=(64, 64)),
                               semantic_inference(out["pred_logits"], out["pred_masks"], (64, 64)))


def mmseg_semantic_logits(pred_logits, pred_masks, size):
    """mmseg ``Mask2FormerHead.predict`` written out: bilinear upsampling of every query's mask logits to the
    input size, sigmoid, then per class the sum over queries weighted by softmax(class) without no-object."""
    up = F.interpolate(pred_masks, size=size, mode="bilinear", align_corners=False).sigmoid()
    probs = pred_logits.softmax(-1)[..., :-1]
    out = torch.zeros(pred_logits.shape[0], probs.shape[-1], *size)
    for q in range(pred_logits.shape[1]):
        out += probs[:, q, :, None, None] * up[:, q, None]
    return out


def test_semantic_inference_upsamples_mask_logits_before_the_sigmoid():
    g = torch.Generator().manual_seed(0)
    logits, masks = torch.randn(2, 8, 6, generator=g), 4 * torch.randn(2, 8, 5, 7, generator=g)
    got = semantic_inference(logits, masks, (20, 28))
    torch.testing.assert_close(got, mmseg_semantic_logits(logits, masks, (20, 28)), rtol=1e-6, atol=1e-6)
    combine_then_resize = F.interpolate(semantic_inference(logits, masks), size=(20, 28), mode="bilinear")
    assert (got - combine_then_resize).abs().max() > 1e-2  # the order matters


def test_query_overrides_replace_tables_and_removal():
    head = make_head().eval()
    feats = features()
    with torch.no_grad():
        base = head(feats)
        content = head.query_feat.weight[None].expand(2, -1, -1).clone()
        pos = head.query_embed.weight[None].expand(2, -1, -1).clone()
        same = head(feats, query_content=content, query_pos=pos)
        torch.testing.assert_close(same["pred_masks"], base["pred_masks"])
        other = head(feats, query_pos=pos + 1.0)
        assert not torch.allclose(other["pred_masks"], base["pred_masks"])
        n_before = sum(p.numel() for p in head.parameters())
        head.remove_learned_queries()
        assert head.query_feat is None and head.query_embed is None
        assert sum(p.numel() for p in head.parameters()) == n_before - 2 * 8 * 32
        with pytest.raises(ValueError, match="pass query_content"):
            head(feats)
        again = head(feats, query_content=content, query_pos=pos)
        torch.testing.assert_close(again["pred_masks"], base["pred_masks"])
        # any number of queries works when both are given (e.g. Rein's 100 tokens)
        out = head(feats, query_content=torch.randn(2, 3, 32), query_pos=torch.randn(2, 3, 32))
        assert out["pred_masks"].shape == (2, 3, 16, 16)


def test_replaceable_class_predictor():
    head = make_head()

    class TextClassifier(nn.Module):  # Vireo-style: project, then dot with fixed "text" embeddings
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(32, 12)
            self.register_buffer("text", torch.randn(6, 12))

        def forward(self, x):
            return self.proj(x) @ self.text.T

    head.class_predictor = TextClassifier()
    out = head(features())
    assert out["pred_logits"].shape == (2, 8, 6)
    labels = torch.randint(0, 5, (2, 64, 64))
    sum(head.losses(out, labels).values()).backward()
    assert head.class_predictor.proj.weight.grad is not None


def test_text_cross_attention_variant():
    cfg = dataclasses.replace(TINY, text_cross_attention_dim=12, num_text_tokens=5, num_queries=5)
    head = make_head(cfg, matcher=FixedMatcher(5)).eval()
    assert head.pixel_decoder.text_proj.in_features == 12 and head.pixel_decoder.text_pos.shape == (5, 32)
    feats = features()
    text = torch.randn(2, 5, 12)
    with torch.no_grad():
        a = head(feats, text_context=text)
        b = head(feats, text_context=text + 1.0)
    assert a["pred_masks"].shape == (2, 5, 16, 16)
    assert not torch.allclose(a["pred_masks"], b["pred_masks"])
    with pytest.raises(ValueError, match="text_context"):
        head(feats)
    head.train()
    losses = head.losses(head(feats, text_context=text), torch.randint(0, 5, (2, 64, 64)))
    sum(losses.values()).backward()
    assert head.pixel_decoder.text_proj.weight.grad is not None
    with pytest.raises(ValueError, match="num_queries == num_classes"):
        Mask2FormerHead(dataclasses.replace(cfg, num_queries=7), matcher=FixedMatcher(5))


def test_attention_mask_from_previous_masks():
    head = make_head()
    mask_features = torch.randn(1, 32, 8, 8)
    queries = torch.randn(1, 8, 32)
    with torch.no_grad():
        head.mask_embed[-1].weight.zero_()
        head.mask_embed[-1].bias.zero_()
        head.mask_embed[-1].bias[0] = -1.0  # channel 0 of mask_features decides the sign
    mask_features[0, 0] = -1.0
    mask_features[0, 0, :4] = 1.0  # top half: logits -1 (masked), bottom: +1 (attend)
    _, masks, allowed = head._predict(queries, mask_features, (2, 2))
    assert allowed.shape == (1, 8, 4)
    assert allowed[0, 0].tolist() == [False, False, True, True]
    head.mask_embed[-1].bias.data[0] = 0.0
    head.mask_embed[-1].bias.data[1] = -5.0  # everything masked -> the row is unmasked
    mask_features.zero_()
    _, _, allowed = head._predict(queries, mask_features, (2, 2))
    assert allowed.all()


def test_attention_mask_threshold_is_mmdets_sigmoid_test():
    """mmdet masks where ``sigmoid(x) < 0.5``: a logit of -1e-8 has sigmoid exactly 0.5 in fp32 and may attend
    (an ``x >= 0`` test would mask it); -1e-3 is masked."""
    head = make_head()
    mask_features = torch.zeros(1, 32, 2, 2)
    mask_features[0, 0] = torch.tensor([[-1e-8, 1e-8], [-1e-3, 0.0]])
    with torch.no_grad():
        head.mask_embed[-1].weight.zero_()
        head.mask_embed[-1].bias.zero_()
        head.mask_embed[-1].bias[0] = 1.0  # mask logits = channel 0 of mask_features, for every query
    _, masks, allowed = head._predict(torch.randn(1, 8, 32), mask_features, (2, 2))
    assert torch.sigmoid(torch.tensor(-1e-8)).item() == 0.5
    assert allowed[0, 0].tolist() == [True, True, False, True]


def test_losses_backprop_to_every_parameter_and_full_mask_mode():
    for on_points in (True, False):
        head = make_head(dataclasses.replace(TINY, mask_loss_on_points=on_points))
        labels = torch.randint(0, 5, (2, 64, 64))
        labels[:, :8] = 255
        losses = head.losses(head(features()), labels)
        assert set(losses) == {"loss_cls", "loss_mask", "loss_dice"}
        assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
        sum(losses.values()).backward()
        missing = [n for n, p in head.named_parameters() if p.grad is None]
        assert not missing, missing


def test_tiny_overfit_reduces_loss():
    head = make_head()
    feats = features(batch=2, seed=3)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, :, 32:] = 1
    labels[0, 40:] = 3
    labels[1, :20, :20] = 4
    labels[1, 60:] = 255
    opt = torch.optim.Adam(head.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        loss = sum(head.losses(head(feats), labels).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0], history


def test_real_scale_parameter_count_on_meta():
    with torch.device("meta"):
        head = Mask2FormerHead(Mask2FormerConfig())
        tqdm_head = Mask2FormerHead(
            Mask2FormerConfig(num_queries=19, text_cross_attention_dim=768), matcher=FixedMatcher(19))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # pixel decoder: 3 input convs (1024*256 + 256 + GN 512) = 788,736; 6 encoder layers x 732,192
    # (MSDA 205,600 + FFN 525,568 + 2 LN 1,024) = 4,393,152; level embed 768; lateral 1x1 (no bias) + GN
    # 262,656; output 3x3 (no bias) + GN 590,336; mask feature 65,792  -> 6,101,440
    assert count(head.pixel_decoder) == 6_101_440
    # decoder: 9 x (2 attn x 263,168 + FFN 1,050,880 + 3 LN 1,536) = 14,208,768
    assert count(head.layers) == 14_208_768
    # + decoder norm 512, level embed 768, 2 query tables 51,200, class 5,140, mask MLP 197,376
    assert count(head) == 20_565_204
    # tqdm: 19 queries (-41,472), text proj 768->256 (196,864) + key pos 19x256 (4,864),
    # 6 x (text cross-attn 263,168 + LN 512)
    assert count(tqdm_head) == 20_565_204 - 41_472 + 196_864 + 4_864 + 6 * 263_680
