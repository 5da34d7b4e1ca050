"""The mmdet/mmseg Mask2Former key mapping (methods/heads/mmdet_keys.py) against our Mask2FormerHead."""

import pytest
import torch

from methods.heads.mask2former import Mask2FormerConfig, Mask2FormerHead
from methods.heads.mmdet_keys import (
    convert_mmdet_head,
    detect_mmdet_style,
    mmdet_head_key,
    mmdet_mask2former_template,
    synthetic_state_dict,
)

# distinct input widths: the template fixes which map each conv takes (input_convs[0] = coarsest)
TINY = Mask2FormerConfig(in_channels=(24, 40, 56, 72), hidden_dim=32, num_queries=6, num_classes=5, num_heads=2,
                         pixel_decoder_layers=2, pixel_decoder_ffn=48, decoder_layers=3, decoder_ffn=40,
                         train_num_points=64)


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    return Mask2FormerHead(TINY)


@pytest.mark.parametrize("style", ["mmdet3", "mmcv1"])
def test_template_loads_exactly_and_lands_in_the_right_tensors(head, style):
    template = mmdet_mask2former_template(TINY, style=style)
    sd = synthetic_state_dict(template, seed=1)
    sd["backbone.something"] = torch.zeros(1)
    conv = convert_mmdet_head(sd)
    assert conv.style == style
    assert conv.unmatched == {}
    assert set(conv.rest) == {"backbone.something"}
    ours = {"decode_head." + k: v for k, v in head.state_dict().items()}
    assert set(conv.tensors) == set(ours)  # nothing missing, nothing unexpected
    for k, v in conv.tensors.items():
        assert tuple(v.shape) == tuple(ours[k].shape), k
    result = head.load_state_dict({k[len("decode_head."):]: v for k, v in conv.tensors.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # a few values in the right places
    assert torch.equal(head.class_predictor.weight, sd["decode_head.cls_embed.weight"])
    assert torch.equal(head.pixel_decoder.level_embed, sd["decode_head.pixel_decoder.level_encoding.weight"])
    assert torch.equal(head.level_embed, sd["decode_head.level_embed.weight"])
    assert torch.equal(head.decoder_norm.bias, sd["decode_head.transformer_decoder.post_norm.bias"])
    assert torch.equal(head.pixel_decoder.input_convs[0][0].weight,
                       sd["decode_head.pixel_decoder.input_convs.0.conv.weight"])
    assert head.pixel_decoder.input_convs[0][0].weight.shape[1] == 72  # coarsest map first
    assert torch.equal(head.pixel_decoder.input_convs[2][1].weight,
                       sd["decode_head.pixel_decoder.input_convs.2.gn.weight"])
    if style == "mmdet3":
        cross = "decode_head.transformer_decoder.layers.1.cross_attn.attn.in_proj_weight"
        selfa = "decode_head.transformer_decoder.layers.2.self_attn.attn.out_proj.bias"
        ffn = "decode_head.pixel_decoder.encoder.layers.1.ffn.layers.1.weight"
        offs = "decode_head.pixel_decoder.encoder.layers.0.self_attn.sampling_offsets.weight"
    else:
        cross = "decode_head.transformer_decoder.layers.1.attentions.0.attn.in_proj_weight"
        selfa = "decode_head.transformer_decoder.layers.2.attentions.1.attn.out_proj.bias"
        ffn = "decode_head.pixel_decoder.encoder.layers.1.ffns.0.layers.1.weight"
        offs = "decode_head.pixel_decoder.encoder.layers.0.attentions.0.sampling_offsets.weight"
    assert torch.equal(head.layers[1].cross_attn.in_proj_weight, sd[cross])
    assert torch.equal(head.layers[2].self_attn.out_proj.bias, sd[selfa])
    assert torch.equal(head.pixel_decoder.layers[1].ffn[2].weight, sd[ffn])
    assert torch.equal(head.pixel_decoder.layers[0].self_attn.sampling_offsets.weight, sd[offs])
    assert torch.equal(head.layers[0].norms[2].weight, sd["decode_head.transformer_decoder.layers.0.norms.2.weight"])
    assert torch.equal(head.pixel_decoder.layers[1].norm2.weight,
                       sd["decode_head.pixel_decoder.encoder.layers.1.norms.1.weight"])
    assert torch.equal(head.mask_embed[4].weight, sd["decode_head.mask_embed.4.weight"])


def test_single_keys_and_style_detection():
    assert mmdet_head_key("cls_embed.bias") == "class_predictor.bias"
    assert mmdet_head_key("transformer_decoder.post_norm.weight") == "decoder_norm.weight"
    assert mmdet_head_key("pixel_decoder.lateral_convs.0.conv.weight") == "pixel_decoder.lateral_convs.0.0.weight"
    assert mmdet_head_key("transformer_decoder.layers.4.ffn.layers.0.0.bias") == "layers.4.ffn.0.bias"
    # mmcv1 numbering follows the operation order
    assert mmdet_head_key("transformer_decoder.layers.0.attentions.0.attn.in_proj_bias", style="mmcv1") \
        == "layers.0.cross_attn.in_proj_bias"
    assert mmdet_head_key("transformer_decoder.layers.0.attentions.0.attn.in_proj_bias", style="mmcv1",
                          decoder_order="self_cross_ffn") == "layers.0.self_attn.in_proj_bias"
    assert mmdet_head_key("querys2feat.weight") is None  # method-specific extras are left to the method
    assert detect_mmdet_style(["decode_head.pixel_decoder.encoder.layers.0.attentions.0.value_proj.weight"]) == "mmcv1"
    assert detect_mmdet_style(["decode_head.pixel_decoder.encoder.layers.0.self_attn.value_proj.weight"]) == "mmdet3"
    with pytest.raises(ValueError, match="naming style"):
        mmdet_head_key("cls_embed.bias", style="mmdet9")


def test_reference_head_parameter_count_at_paper_scale():
    """The template (written from mmdet's structure) and our head hold the same number of parameters."""
    cfg = Mask2FormerConfig()
    template = mmdet_mask2former_template(cfg)
    n_template = sum(int(torch.Size(s).numel()) for s in template.values())
    with torch.device("meta"):
        ours = Mask2FormerHead(cfg)
    assert n_template == sum(p.numel() for p in ours.parameters()) == 20_565_204


# every renaming rule once, the expected key written out from mmdet's module structure (module docstring)
COMMON = [
    ("pixel_decoder.input_convs.2.conv.weight", "pixel_decoder.input_convs.2.0.weight"),
    ("pixel_decoder.lateral_convs.0.conv.weight", "pixel_decoder.lateral_convs.0.0.weight"),
    ("pixel_decoder.output_convs.1.conv.bias", "pixel_decoder.output_convs.1.0.bias"),
    ("pixel_decoder.input_convs.0.gn.bias", "pixel_decoder.input_convs.0.1.bias"),
    ("pixel_decoder.lateral_convs.3.gn.weight", "pixel_decoder.lateral_convs.3.1.weight"),
    ("pixel_decoder.output_convs.0.gn.weight", "pixel_decoder.output_convs.0.1.weight"),
    ("pixel_decoder.encoder.layers.5.norms.0.weight", "pixel_decoder.layers.5.norm1.weight"),
    ("pixel_decoder.encoder.layers.4.norms.1.bias", "pixel_decoder.layers.4.norm2.bias"),
    ("pixel_decoder.level_encoding.weight", "pixel_decoder.level_embed"),
    ("pixel_decoder.mask_feature.weight", "pixel_decoder.mask_feature.weight"),
    ("pixel_decoder.mask_feature.bias", "pixel_decoder.mask_feature.bias"),
    ("transformer_decoder.layers.8.norms.0.weight", "layers.8.norms.0.weight"),
    ("transformer_decoder.layers.7.norms.2.bias", "layers.7.norms.2.bias"),
    ("transformer_decoder.post_norm.bias", "decoder_norm.bias"),
    ("query_embed.weight", "query_embed.weight"),
    ("query_feat.weight", "query_feat.weight"),
    ("level_embed.weight", "level_embed"),
    ("cls_embed.weight", "class_predictor.weight"),
    ("mask_embed.0.weight", "mask_embed.0.weight"),
    ("mask_embed.2.bias", "mask_embed.2.bias"),
    ("mask_embed.4.weight", "mask_embed.4.weight"),
]
MMDET3 = [
    ("pixel_decoder.encoder.layers.3.self_attn.sampling_offsets.bias", "pixel_decoder.layers.3.self_attn.sampling_offsets.bias"),
    ("pixel_decoder.encoder.layers.2.ffn.layers.0.0.weight", "pixel_decoder.layers.2.ffn.0.weight"),
    ("pixel_decoder.encoder.layers.1.ffn.layers.1.bias", "pixel_decoder.layers.1.ffn.2.bias"),
    ("transformer_decoder.layers.6.cross_attn.attn.in_proj_weight", "layers.6.cross_attn.in_proj_weight"),
    ("transformer_decoder.layers.5.self_attn.attn.out_proj.bias", "layers.5.self_attn.out_proj.bias"),
    ("transformer_decoder.layers.4.ffn.layers.0.0.bias", "layers.4.ffn.0.bias"),
    ("transformer_decoder.layers.3.ffn.layers.1.weight", "layers.3.ffn.2.weight"),
]
MMCV1 = [
    ("pixel_decoder.encoder.layers.3.attentions.0.value_proj.weight", "pixel_decoder.layers.3.self_attn.value_proj.weight"),
    ("pixel_decoder.encoder.layers.2.ffns.0.layers.0.0.weight", "pixel_decoder.layers.2.ffn.0.weight"),
    ("pixel_decoder.encoder.layers.1.ffns.0.layers.1.bias", "pixel_decoder.layers.1.ffn.2.bias"),
    ("transformer_decoder.layers.6.attentions.0.attn.in_proj_bias", "layers.6.cross_attn.in_proj_bias"),
    ("transformer_decoder.layers.5.attentions.1.attn.out_proj.weight", "layers.5.self_attn.out_proj.weight"),
    ("transformer_decoder.layers.4.ffns.0.layers.0.0.bias", "layers.4.ffn.0.bias"),
    ("transformer_decoder.layers.3.ffns.0.layers.1.weight", "layers.3.ffn.2.weight"),
]
NOT_HEAD = ["querys2feat.weight", "cls_embed", "mask_embed.1.weight", "level_embed.weight.x", "xcls_embed.weight",
            "pixel_decoder.level_encoding.weight.x", "pixel_decoder.mask_feature.weight.x", "query_embed.weightx",
            "transformer_decoder.layers.0.norms.3.weight", "pixel_decoder.encoder.layers.0.norms.2.weight",
            "pixel_decoder.other_convs.0.conv.weight"]


@pytest.mark.parametrize("key,ours", COMMON + MMDET3)
def test_each_mmdet3_rule(key, ours):
    assert mmdet_head_key(key) == ours
    conv = convert_mmdet_head({"decode_head." + key: torch.ones(1)}, style="mmdet3")
    assert list(conv.tensors) == ["decode_head." + ours]


@pytest.mark.parametrize("key,ours", COMMON + MMCV1)
def test_each_mmcv1_rule(key, ours):
    assert mmdet_head_key(key, style="mmcv1") == ours


@pytest.mark.parametrize("key", NOT_HEAD)
def test_keys_outside_the_standard_head(key):
    assert mmdet_head_key(key) is None and mmdet_head_key(key, style="mmcv1") is None


def test_mmcv1_self_cross_order_and_mmdet3_names_are_not_mixed():
    key = "transformer_decoder.layers.2.attentions.1.attn.in_proj_weight"
    assert mmdet_head_key(key, style="mmcv1", decoder_order="self_cross_ffn") == "layers.2.cross_attn.in_proj_weight"
    assert mmdet_head_key(key, style="mmdet3") is None
    assert mmdet_head_key("transformer_decoder.layers.2.cross_attn.attn.in_proj_weight", style="mmcv1") is None
    # encoder attentions are always self-attention, whatever the decoder order
    assert mmdet_head_key("pixel_decoder.encoder.layers.0.attentions.0.value_proj.bias", style="mmcv1",
                          decoder_order="self_cross_ffn") == "pixel_decoder.layers.0.self_attn.value_proj.bias"


def test_convert_prefixes_detection_and_leftovers():
    a, b, c, d = (torch.full((1,), float(i)) for i in range(4))
    state = {"model.head.cls_embed.bias": a, "model.head.transformer_decoder.layers.0.ffns.0.layers.1.bias": b,
             "model.head.querys2feat.weight": c, "decode_head.cls_embed.bias": d}
    conv = convert_mmdet_head(state, src_prefix="model.head.", dst_prefix="head.")
    assert conv.style == "mmcv1"  # detected from the head's keys only
    assert list(conv.tensors) == ["head.class_predictor.bias", "head.layers.0.ffn.2.bias"]
    assert conv.tensors["head.class_predictor.bias"] is a and conv.tensors["head.layers.0.ffn.2.bias"] is b
    assert list(conv.unmatched) == ["model.head.querys2feat.weight"] and conv.unmatched["model.head.querys2feat.weight"] is c
    assert list(conv.rest) == ["decode_head.cls_embed.bias"] and conv.rest["decode_head.cls_embed.bias"] is d
    # an mmcv1 key outside the head does not change the head's style
    conv = convert_mmdet_head({"decode_head.cls_embed.bias": a, "backbone.ffns.0.x": b})
    assert conv.style == "mmdet3" and list(conv.tensors) == ["decode_head.class_predictor.bias"]
    # a style given overrides detection; decoder_order reaches the rules
    conv = convert_mmdet_head({"decode_head.transformer_decoder.layers.0.attentions.0.attn.in_proj_bias": a},
                              style="mmcv1", decoder_order="self_cross_ffn")
    assert conv.style == "mmcv1" and list(conv.tensors) == ["decode_head.layers.0.self_attn.in_proj_bias"]
    conv = convert_mmdet_head({"decode_head.transformer_decoder.layers.0.attentions.0.attn.in_proj_bias": a},
                              style="mmdet3")
    assert conv.style == "mmdet3" and list(conv.unmatched) == [
        "decode_head.transformer_decoder.layers.0.attentions.0.attn.in_proj_bias"]
    assert convert_mmdet_head({}).style == "mmdet3"


def test_style_detection_and_errors_in_full():
    assert detect_mmdet_style(["decode_head.transformer_decoder.layers.0.ffns.0.layers.1.bias"]) == "mmcv1"
    assert detect_mmdet_style(["x.attentions.0", "y"]) == "mmcv1" and detect_mmdet_style([]) == "mmdet3"
    assert detect_mmdet_style(["attentions.0.x", "ffns.x"]) == "mmdet3"  # the names sit inside a key
    for call in (lambda: mmdet_head_key("cls_embed.bias", style="mmcv2"),
                 lambda: convert_mmdet_head({"decode_head.cls_embed.bias": torch.ones(1)}, style="mmcv2"),
                 lambda: mmdet_mask2former_template(TINY, style="mmcv2")):
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == "unknown mmdet naming style 'mmcv2'; expected one of ('mmdet3', 'mmcv1')"


def test_template_options():
    t = mmdet_mask2former_template(TINY, prefix="head.", query_tables=False)
    assert "head.query_embed.weight" not in t and "head.query_feat.weight" not in t
    assert t["head.cls_embed.weight"] == (6, 32) and t["head.level_embed.weight"] == (3, 32)
    full = mmdet_mask2former_template(TINY)
    assert full["decode_head.query_embed.weight"] == (6, 32) and full["decode_head.query_feat.weight"] == (6, 32)
    assert len(full) == len(t) + 2
    # shapes written out for the tiny config: 2 heads x 3 levels x 4 points
    assert full["decode_head.pixel_decoder.encoder.layers.0.self_attn.sampling_offsets.weight"] == (48, 32)
    assert full["decode_head.pixel_decoder.encoder.layers.1.self_attn.attention_weights.bias"] == (24,)
    assert full["decode_head.pixel_decoder.input_convs.2.conv.weight"] == (32, 40, 1, 1)
    assert full["decode_head.pixel_decoder.lateral_convs.0.conv.weight"] == (32, 24, 1, 1)
    assert full["decode_head.transformer_decoder.layers.2.ffn.layers.0.0.weight"] == (40, 32)
    assert full["decode_head.pixel_decoder.encoder.layers.1.ffn.layers.1.weight"] == (32, 48)
    sd = synthetic_state_dict({"a": (2, 3), "b": (4,)}, seed=5)
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(sd["a"], torch.randn(2, 3, generator=gen)) and torch.equal(sd["b"], torch.randn(4, generator=gen))


def test_keys_outside_the_head_do_not_stop_the_conversion():
    a, b, c = (torch.full((1,), float(i)) for i in range(3))
    conv = convert_mmdet_head({"backbone.x": a, "decode_head.cls_embed.bias": b, "auxiliary_head.y": c,
                               "decode_head.level_embed.weight": a})
    assert list(conv.rest) == ["backbone.x", "auxiliary_head.y"]
    assert list(conv.tensors) == ["decode_head.class_predictor.bias", "decode_head.level_embed"]
    gen = torch.Generator().manual_seed(0)  # the default seed is 0
    assert torch.equal(synthetic_state_dict({"a": (3,)})["a"], torch.randn(3, generator=gen))
