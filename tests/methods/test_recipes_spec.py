"""Every paper recipe and head config pinned, one table per method, to shared/specs/methods.md (section named
in each row). A changed hyperparameter (schedule power, minimum LR, warm-up, loss weights, no-object weight,
crop, iterations, batch, LR multipliers) turns its row red. Values are typed here from the spec, never read
from the code under test."""

import dataclasses

import pytest

from methods.base import ParamRule
from methods.heads.mask2former import Mask2FormerConfig, Mask2FormerHead
from methods.registry import get_method_class

REIN_SHORT_EDGES = tuple(int(512 * x / 10) for x in range(5, 21))  # §2.2: int(512 x / 10), x = 5..20
REIN_SHORT_EDGES_1024 = tuple(int(1024 * x / 10) for x in range(5, 21))  # §2.2 C->ACDC: 512..2048

REIN_RULES = (ParamRule("query_embed", decay_mult=0.0), ParamRule("decode_head.level_embed", decay_mult=0.0),
              ParamRule("learnable_tokens", decay_mult=0.0), ParamRule("reins.scale", decay_mult=0.0))
REIN_512 = dict(  # §2.2 configs/dinov2/rein_dinov2_mask2former_512x512_bs1x4.py (also SET §3.2, Vireo §5.2)
    iterations=40000, batch_size=4, optimizer="adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8,
    schedule="poly", power=0.9, min_lr=0.0, warmup_iters=0, constant_iters=0, grad_clip=None, crop_size=(512, 512),
    norm_decay_mult=0.0, param_rules=REIN_RULES, gta_split="all", rare_class_sampling=None,
    augmentation=dict(rescale="short_edge_choices", short_edge_choices=REIN_SHORT_EDGES, max_long_edge=2048,
                      cat_max_ratio=0.75, hflip_prob=0.5, photometric=True))

TQDM_G = dict(  # §1.2 tqdm_eva_vit-l_1e-5_20k-g2c-512.py
    iterations=20000, batch_size=8, optimizer="adamw", lr=1e-5, weight_decay=1e-4, schedule="poly", power=0.9,
    min_lr=1e-6, warmup_iters=1500, warmup_ratio=1e-6, constant_iters=0, grad_clip=None, crop_size=(512, 512),
    gta_split="train", rare_class_sampling=dict(class_temp=100.0, min_pixels=3000, min_crop_ratio=0.5),
    norm_decay_mult=1.0,
    param_rules=(ParamRule("text_encoder", lr_mult=0.0), ParamRule("backbone", lr_mult=0.1),
                 ParamRule("neck", lr_mult=0.1), ParamRule("norm", decay_mult=0.0)),
    augmentation=dict(rescale="ratio_range", ratio_range=(0.5, 2.0), base_size=None, cat_max_ratio=0.75,
                      hflip_prob=0.5, photometric=True))

VLTSEG_RULES = (  # §6: backbone lr_mult 0.1; backbone norms and pos-embed lr 0.1 with decay 0
    ParamRule("backbone.[norm]", lr_mult=0.1, decay_mult=0.0), ParamRule("backbone.vit.pos_embed", lr_mult=0.1,
                                                                         decay_mult=0.0),
    ParamRule("backbone.", lr_mult=0.1), ParamRule("neck.", lr_mult=0.1),
    ParamRule("decode_head.query_embed", decay_mult=0.0), ParamRule("decode_head.query_feat", decay_mult=0.0),
    ParamRule("decode_head.level_embed", decay_mult=0.0))
VLTSEG_SYN = dict(  # §6 synthetic sources: 5k iterations, batch 16, crop 512, GTA resized to 1280x720
    iterations=5000, batch_size=16, optimizer="adamw", lr=1e-4, weight_decay=0.05, schedule="poly", power=0.9,
    min_lr=0.0, warmup_iters=0, constant_iters=500, grad_clip=0.01, crop_size=(512, 512), gta_split="all",
    norm_decay_mult=0.0, param_rules=VLTSEG_RULES,
    augmentation=dict(rescale="fixed", fixed_size=(1280, 720), cat_max_ratio=0.75, hflip_prob=0.5, photometric=True))

FAMIX_GTA = dict(  # §4.2: SGD 0.9, wd 1e-4, lr 0.1 decoder / 0.01 backbone, poly 0.9, 40k x 8, 768 crop, no rescale
    iterations=40000, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="poly",
    power=0.9, min_lr=1e-6,  # main.py's PolyLR floor (not in methods.md)
    warmup_iters=0, constant_iters=0, grad_clip=None, crop_size=(768, 768), gta_split="train",
    param_rules=(ParamRule("backbone", lr_mult=0.1),), norm_decay_mult=1.0,
    augmentation=dict(rescale="none", cat_max_ratio=1.0, hflip_prob=0.5, photometric=False,
                      color_jitter=(0.8, 0.8, 0.8)))

RECIPES = [
    ("rein", "gta5", REIN_512),
    ("rein", "cityscapes", {**REIN_512, "batch_size": 8, "lr": 6e-5, "warmup_iters": 10000, "warmup_ratio": 1e-6,
                            "constant_iters": 10000, "crop_size": (1024, 1024),  # §2.2 C->ACDC 1024x1024 bs4x2
                            "augmentation": {**REIN_512["augmentation"], "short_edge_choices": REIN_SHORT_EDGES_1024,
                                             "max_long_edge": 4096}}),
    ("set", "gta5", REIN_512),
    ("set", "cityscapes", REIN_512),  # §3.2: identical to Rein's 512 recipe
    ("vireo", "gta5", REIN_512),
    ("vireo", "cityscapes", {**REIN_512, "grad_clip": 0.1}),  # §5.2: the _citys config adds grad-clip 0.1
    ("frozen_m2f", "gta5", REIN_512),  # the baseline trains the head with Rein's recipe
    ("tqdm", "gta5", TQDM_G),
    ("tqdm", "synthia", TQDM_G),
    ("tqdm", "cityscapes", {**TQDM_G, "lr": 1e-4, "weight_decay": 1e-5,  # §1.2 C-source, + no decay on embeds
                            "param_rules": (ParamRule("text_encoder", lr_mult=0.0),
                                            ParamRule("pixel_decoder.level_embed"),
                                            ParamRule("level_embed", decay_mult=0.0),
                                            ParamRule("query_embed", decay_mult=0.0),
                                            ParamRule("backbone", lr_mult=0.1), ParamRule("neck", lr_mult=0.1),
                                            ParamRule("norm", decay_mult=0.0))}),
    ("vltseg", "gta5", VLTSEG_SYN),
    ("vltseg", "synthia", VLTSEG_SYN),
    ("vltseg", "cityscapes", {**VLTSEG_SYN, "iterations": 20000, "batch_size": 8, "crop_size": (1024, 1024),
                              "augmentation": {**VLTSEG_SYN["augmentation"], "fixed_size": (2048, 1024)}}),
    ("famix", "gta5", FAMIX_GTA),
    ("famix", "synthia", {**FAMIX_GTA,  # RandomSizeAndCrop 720 at scale 0.5-2, resized to 768
                          "augmentation": {**FAMIX_GTA["augmentation"], "rescale": "ratio_range",
                                           "ratio_range": (0.5 * 768 / 720, 2.0 * 768 / 720), "base_size": None}}),
]


@pytest.mark.parametrize("method,source,expected", RECIPES, ids=[f"{m}-{s}" for m, s, _ in RECIPES])
def test_paper_recipe(method, source, expected):
    recipe = get_method_class(method).recipe(source=source, scale="paper")
    for field, value in expected.items():
        got = getattr(recipe, field)
        if field == "augmentation":
            assert set(got) == set(value), (field, sorted(got))
            for k, v in value.items():
                assert got[k] == pytest.approx(v), (field, k, got[k], v)
        else:
            assert got == pytest.approx(value) if isinstance(value, float) else got == value, (field, got, value)


M2F = dict(  # §0: the mmdet/mmseg Mask2Former config every query-based method shares
    hidden_dim=256, num_queries=100, num_heads=8, pixel_decoder_layers=6, pixel_decoder_ffn=1024, deform_points=4,
    decoder_layers=9, decoder_ffn=2048, train_num_points=12544, oversample_ratio=3.0, importance_sample_ratio=0.75,
    class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1, num_feature_levels=3,
    decoder_order="cross_self_ffn")
HEADS = [("rein", M2F), ("set", M2F), ("vireo", M2F), ("vltseg", M2F), ("frozen_m2f", M2F),
         # §0/§1.1: one query per class, pixel->text cross-attention on the 768-d text embeddings; pixel-decoder
         # FFN 2048, what the released checkpoints hold (mmcv overrides the config's ffn_cfgs 1024: tqdm.py)
         ("tqdm", {**M2F, "num_queries": 19, "text_cross_attention_dim": 768, "pixel_decoder_ffn": 2048})]


@pytest.mark.parametrize("method,expected", HEADS, ids=[m for m, _ in HEADS])
def test_paper_head_config(method, expected):
    head = get_method_class(method).default_config(scale="paper").head
    assert isinstance(head, Mask2FormerConfig)
    assert {k: getattr(head, k) for k in expected} == expected
    assert head.num_classes == 19 and head.in_channels == (1024,) * 4


def test_famix_head_is_deeplabv3plus_of_the_spec():
    head = get_method_class("famix").default_config(scale="paper").head  # §4.1: DeepLabv3+ on CLIP RN50
    assert (head.in_channels, head.low_level_channels, head.aspp_rates, head.aspp_channels) == (2048, 256, (6, 12, 18),
                                                                                                256)
    assert (head.low_level_proj, head.decoder_channels, head.num_classes) == (48, 256, 19)


def test_head_config_reaches_the_criterion_and_matcher():
    """The loss weights in the *config* are the ones used (not the criterion's own defaults)."""
    cfg = dataclasses.replace(Mask2FormerConfig(in_channels=(8, 8, 8, 8), hidden_dim=32, num_queries=4,
                                                num_heads=2, pixel_decoder_layers=1, pixel_decoder_ffn=16,
                                                decoder_layers=1, decoder_ffn=16, num_classes=3),
                              class_weight=1.5, mask_weight=4.0, dice_weight=3.0, no_object_weight=0.25,
                              train_num_points=99, oversample_ratio=2.5, importance_sample_ratio=0.5)
    crit = Mask2FormerHead(cfg).criterion
    assert (crit.class_weight, crit.mask_weight, crit.dice_weight) == (1.5, 4.0, 3.0)
    assert crit.empty_weight.tolist() == [1.0, 1.0, 1.0, 0.25]
    assert (crit.num_points, crit.oversample_ratio, crit.importance_sample_ratio) == (99, 2.5, 0.5)
    m = crit.matcher
    assert (m.class_weight, m.mask_weight, m.dice_weight, m.num_points) == (1.5, 4.0, 3.0, 99)
