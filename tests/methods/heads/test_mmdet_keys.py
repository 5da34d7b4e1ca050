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
