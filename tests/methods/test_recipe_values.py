"""Every field of every recipe (method x source x scale) written out, the miniature twins and the provenance
strings included, and ``param_groups`` on hand-made modules with the groups listed by hand.

``test_recipes_spec.py`` pins the paper numbers to shared/specs/methods.md; this file pins the rest of each
``TrainRecipe`` (evaluation variant, poly convention, checkpoint/log intervals, source text, the CPU twins the
README's miniature results were produced with), the recipe functions' keyword overrides and error messages, and
the optimizer grouping. Values are typed here, never read from the code under test.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from torch import nn

from methods.base import Method, MethodConfig, ParamRule, TrainRecipe
from methods.famix import famix_recipe
from methods.registry import get_method_class
from methods.rein import rein_recipe
from methods.set import set_recipe
from methods.tqdm import TQDM_RARE_CLASS_SAMPLING, tqdm_recipe
from methods.vireo import vireo_recipe
from methods.vltseg import VLTSeg, expand_norm_rules, vltseg_recipe

# ------------------------------------------------------------------------------------------ the recipes
FIELDS = {f.name for f in dataclasses.fields(TrainRecipe)}

REIN_RULES = (ParamRule("query_embed", 1.0, 0.0), ParamRule("decode_head.level_embed", 1.0, 0.0),
              ParamRule("learnable_tokens", 1.0, 0.0), ParamRule("reins.scale", 1.0, 0.0))
REIN_SRC = "w1oves/Rein configs/dinov2/rein_dinov2_mask2former_512x512_bs1x4.py (seed 42, fp32)"
REIN_GTA = dict(
    iterations=40000, batch_size=4, optimizer="adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8,
    momentum=0.9, param_rules=REIN_RULES, norm_decay_mult=0.0, schedule="poly", power=0.9, min_lr=0.0,
    warmup_iters=0, warmup_ratio=1e-6, constant_iters=0, poly_convention="mmengine", grad_clip=None,
    crop_size=(512, 512),
    augmentation=dict(rescale="short_edge_choices",
                      short_edge_choices=(256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972,
                                          1024),
                      max_long_edge=2048, cat_max_ratio=0.75, hflip_prob=0.5, photometric=True),
    gta_split="all", eval_variant="rein", rare_class_sampling=None, select_interval=0, checkpoint_interval=4000,
    log_interval=50, source=REIN_SRC)
REIN_CITY = {
    **REIN_GTA, "batch_size": 8, "lr": 6e-5, "warmup_iters": 10000, "constant_iters": 10000, "crop_size": (1024, 1024),
    "augmentation": {**REIN_GTA["augmentation"], "max_long_edge": 4096,
                     "short_edge_choices": (512, 614, 716, 819, 921, 1024, 1126, 1228, 1331, 1433, 1536, 1638, 1740,
                                            1843, 1945, 2048)},
    "eval_variant": "rein_1024",
    "source": "w1oves/Rein configs/dinov2/rein_dinov2_mask2former_1024x1024_bs4x2.py (4 GPUs x 2; seed 42, fp32)"}
REIN_MINI = dict(iterations=480, batch_size=4, lr=1e-3, warmup_iters=10, warmup_ratio=1e-6, constant_iters=0,
                 crop_size=(256, 256), checkpoint_interval=160, log_interval=40,
                 augmentation=dict(rescale="ratio_range", ratio_range=(0.75, 1.5), cat_max_ratio=0.75, hflip_prob=0.5,
                                   photometric=True))

SET_CITY_SRC = ("JingjunYi/SET configs/my/citys_rein_dinov2_mask2former_512x512_bs1x4.py (Rein's 512 recipe on "
                "Cityscapes train; seed 42, fp32)")
VIREO_SRC = ("anonymouse-9c53tp182bvz/Vireo configs/dinov2_domain/vireo_dinov2_mask2former_512x512_bs1x4{}.py "
             "(seed 42, fp32)")

TQDM_GTA = dict(
    iterations=20000, batch_size=8, optimizer="adamw", lr=1e-5, weight_decay=1e-4, betas=(0.9, 0.999), eps=1e-8,
    momentum=0.9, param_rules=(ParamRule("text_encoder", 0.0, 1.0), ParamRule("backbone", 0.1, 1.0),
                               ParamRule("neck", 0.1, 1.0), ParamRule("norm", 1.0, 0.0)),
    norm_decay_mult=1.0, schedule="poly", power=0.9, min_lr=1e-6, warmup_iters=1500, warmup_ratio=1e-6,
    constant_iters=0, poly_convention="mmcv", grad_clip=None, crop_size=(512, 512),
    augmentation=dict(rescale="ratio_range", ratio_range=(0.5, 2.0), base_size=None, cat_max_ratio=0.75,
                      hflip_prob=0.5, photometric=True),
    gta_split="train", eval_variant="tqdm", rare_class_sampling=dict(class_temp=100.0, min_pixels=3000,
                                                                     min_crop_ratio=0.5),
    select_interval=0, checkpoint_interval=2000, log_interval=50,
    source="ByeongHyunPak/tqdm configs/tqdm/tqdm_eva_vit-l_1e-5_20k-g2c-512.py (+ _base_/schedules/schedule_20k.py); "
           "fp32")
TQDM_CITY = {
    **TQDM_GTA, "lr": 1e-4, "weight_decay": 1e-5,
    "param_rules": (ParamRule("text_encoder", 0.0, 1.0), ParamRule("pixel_decoder.level_embed", 1.0, 1.0),
                    ParamRule("level_embed", 1.0, 0.0), ParamRule("query_embed", 1.0, 0.0),
                    ParamRule("backbone", 0.1, 1.0), ParamRule("neck", 0.1, 1.0), ParamRule("norm", 1.0, 0.0)),
    "source": "ByeongHyunPak/tqdm configs/tqdm/tqdm_eva_vit-l_1e-4_20k-c2b-512.py (+ _base_/schedules/"
              "schedule_20k.py); fp32"}
TQDM_MINI = dict(iterations=300, batch_size=4, lr=2e-3, min_lr=1e-6, warmup_iters=20, crop_size=(128, 128),
                 checkpoint_interval=150, log_interval=25, rare_class_sampling=None,
                 augmentation=dict(rescale="ratio_range", ratio_range=(0.75, 1.5), base_size=None, cat_max_ratio=0.75,
                                   hflip_prob=0.5, photometric=True))
TQDM_CLIP_GTA = "configs/tqdm/tqdm_clip_vit-l_1e-5_20k-g2c-512.py"

VLTSEG_RULES = (ParamRule("backbone.[norm]", 0.1, 0.0), ParamRule("backbone.vit.pos_embed", 0.1, 0.0),
                ParamRule("backbone.", 0.1, 1.0), ParamRule("neck.", 0.1, 1.0),
                ParamRule("decode_head.query_embed", 1.0, 0.0), ParamRule("decode_head.query_feat", 1.0, 0.0),
                ParamRule("decode_head.level_embed", 1.0, 0.0))
VLTSEG_SYN = dict(
    iterations=5000, batch_size=16, optimizer="adamw", lr=1e-4, weight_decay=0.05, betas=(0.9, 0.999), eps=1e-8,
    momentum=0.9, param_rules=VLTSEG_RULES, norm_decay_mult=0.0, schedule="poly", power=0.9, min_lr=0.0,
    warmup_iters=0, warmup_ratio=1e-6, constant_iters=500, poly_convention="mmengine", grad_clip=0.01,
    crop_size=(512, 512),
    augmentation=dict(rescale="fixed", fixed_size=(1280, 720), cat_max_ratio=0.75, hflip_prob=0.5, photometric=True),
    gta_split="all", eval_variant="vltseg", rare_class_sampling=None, select_interval=0, checkpoint_interval=500,
    log_interval=50,
    source="VLTSeg/VLTSeg (re-implementation) configs/mask2former_evaclip_2xb8_5k_gta2cityscapes.py, schedule_5k.py "
           "(seed 0, fp32)")
VLTSEG_CITY = {
    **VLTSEG_SYN, "iterations": 20000, "batch_size": 8, "crop_size": (1024, 1024),
    "augmentation": {**VLTSEG_SYN["augmentation"], "fixed_size": (2048, 1024)}, "eval_variant": "vltseg_1024",
    "checkpoint_interval": 2000,
    "source": "VLTSeg/VLTSeg (re-implementation) configs/mask2former_evaclip_2xb4_20k_cityscapes2cityscapes.py, "
              "schedule_20k.py (seed 0, fp32)"}
VLTSEG_MINI = dict(iterations=160, batch_size=4, lr=1e-3, constant_iters=16, crop_size=(256, 256),
                   checkpoint_interval=80, log_interval=20,
                   augmentation=dict(rescale="ratio_range", ratio_range=(0.75, 1.5), cat_max_ratio=0.75,
                                     hflip_prob=0.5, photometric=True))

FAMIX_GTA = dict(
    iterations=40000, batch_size=8, optimizer="sgd", lr=0.1, weight_decay=1e-4, betas=(0.9, 0.999), eps=1e-8,
    momentum=0.9, param_rules=(ParamRule("backbone", 0.1, 1.0),), norm_decay_mult=1.0, schedule="poly", power=0.9,
    min_lr=1e-6, warmup_iters=0, warmup_ratio=1e-6, constant_iters=0, poly_convention="mmcv", grad_clip=None,
    crop_size=(768, 768),
    augmentation=dict(rescale="none", cat_max_ratio=1.0, hflip_prob=0.5, photometric=False,
                      color_jitter=(0.8, 0.8, 0.8)),
    gta_split="train", eval_variant="famix", rare_class_sampling=None, select_interval=0, checkpoint_interval=750,
    log_interval=10,
    source="astra-vision/FAMix main.py defaults (--data_aug; utils/get_dataset.py transforms), styles from "
           "patch_PIN.py; paper numbers are the mean of 3 runs (FAMix#5)")
FAMIX_SYNTHIA = {**FAMIX_GTA, "augmentation": {**FAMIX_GTA["augmentation"], "rescale": "ratio_range",
                                               "ratio_range": (384 / 720, 1536 / 720), "base_size": None}}
FAMIX_MINI = dict(iterations=600, batch_size=4, crop_size=(192, 192), checkpoint_interval=200, log_interval=20)


def mini(paper: dict, changes: dict, suffix: str = "") -> dict:
    return {**paper, **changes, "source": "miniature twin of " + paper["source"] + suffix}


TQDM_SUFFIX = " (no rare-class sampling: uniform on the miniature)"
EXPECTED = {
    ("rein", "gta5", "paper"): REIN_GTA,
    ("rein", "gta5", "miniature"): mini(REIN_GTA, REIN_MINI),
    ("rein", "cityscapes", "paper"): REIN_CITY,
    ("rein", "cityscapes", "miniature"): mini(REIN_CITY, REIN_MINI),
    ("frozen_m2f", "gta5", "paper"): REIN_GTA,
    ("frozen_m2f", "gta5", "miniature"): mini(REIN_GTA, REIN_MINI),
    ("set", "gta5", "paper"): REIN_GTA,
    ("set", "gta5", "miniature"): mini(REIN_GTA, REIN_MINI),
    ("set", "cityscapes", "paper"): {**REIN_GTA, "source": SET_CITY_SRC},
    ("set", "cityscapes", "miniature"): {**REIN_GTA, **REIN_MINI, "source": "miniature twin of " + SET_CITY_SRC},
    ("vireo", "gta5", "paper"): {**REIN_GTA, "source": VIREO_SRC.format("")},
    ("vireo", "gta5", "miniature"): {**REIN_GTA, **REIN_MINI, "source": "miniature twin of " + VIREO_SRC.format("")},
    ("vireo", "cityscapes", "paper"): {**REIN_GTA, "grad_clip": 0.1, "source": VIREO_SRC.format("_citys")},
    ("vireo", "cityscapes", "miniature"): {**REIN_GTA, **REIN_MINI, "grad_clip": 0.1,
                                           "source": "miniature twin of " + VIREO_SRC.format("_citys")},
    ("tqdm", "gta5", "paper"): TQDM_GTA,
    ("tqdm", "gta5", "miniature"): mini(TQDM_GTA, TQDM_MINI, TQDM_SUFFIX),
    ("tqdm", "synthia", "paper"): TQDM_GTA,
    ("tqdm", "synthia", "miniature"): mini(TQDM_GTA, TQDM_MINI, TQDM_SUFFIX),
    ("tqdm", "cityscapes", "paper"): TQDM_CITY,
    ("tqdm", "cityscapes", "miniature"): mini(TQDM_CITY, TQDM_MINI, TQDM_SUFFIX),
    ("vltseg", "gta5", "paper"): VLTSEG_SYN,
    ("vltseg", "gta5", "miniature"): mini(VLTSEG_SYN, VLTSEG_MINI),
    ("vltseg", "synthia", "paper"): VLTSEG_SYN,
    ("vltseg", "synthia", "miniature"): mini(VLTSEG_SYN, VLTSEG_MINI),
    ("vltseg", "cityscapes", "paper"): VLTSEG_CITY,
    ("vltseg", "cityscapes", "miniature"): mini(VLTSEG_CITY, VLTSEG_MINI),
    ("famix", "gta5", "paper"): FAMIX_GTA,
    ("famix", "gta5", "miniature"): mini(FAMIX_GTA, FAMIX_MINI),
    ("famix", "synthia", "paper"): FAMIX_SYNTHIA,
    ("famix", "synthia", "miniature"): mini(FAMIX_SYNTHIA, FAMIX_MINI),
    ("famix", "cityscapes", "paper"): FAMIX_GTA,
    ("famix", "cityscapes", "miniature"): mini(FAMIX_GTA, FAMIX_MINI),
}


def assert_recipe(recipe: TrainRecipe, expected: dict) -> None:
    assert set(expected) == FIELDS  # every field written out
    for name, value in expected.items():
        got = getattr(recipe, name)
        assert type(got) is type(value), (name, got, value)
        if name == "augmentation":
            assert list(got) == list(value), (name, list(got))  # keys in order
            for key, v in value.items():
                assert got[key] == (pytest.approx(v) if isinstance(v, float) else v), (key, got[key], v)
                assert type(got[key]) is type(v), (key, got[key], v)
        else:
            assert got == value, (name, got, value)


@pytest.mark.parametrize("method,source,scale", list(EXPECTED), ids=["-".join(k) for k in EXPECTED])
def test_recipe_in_full(method, source, scale):
    assert_recipe(get_method_class(method).recipe(source=source, scale=scale), EXPECTED[method, source, scale])


def test_recipe_defaults_of_each_method():
    """``Method.recipe()`` without arguments: the paper recipe of the method's main source (SET: Cityscapes)."""
    for method, source in [("rein", "gta5"), ("frozen_m2f", "gta5"), ("set", "cityscapes"), ("vireo", "gta5"),
                           ("tqdm", "gta5"), ("vltseg", "gta5"), ("famix", "gta5")]:
        assert_recipe(get_method_class(method).recipe(), EXPECTED[method, source, "paper"])
    assert_recipe(famix_recipe(), FAMIX_GTA)
    assert_recipe(tqdm_recipe(), TQDM_GTA)
    assert_recipe(rein_recipe("paper"), REIN_GTA)
    assert_recipe(set_recipe("paper"), EXPECTED["set", "cityscapes", "paper"])
    assert_recipe(vireo_recipe("paper"), EXPECTED["vireo", "gta5", "paper"])
    assert_recipe(vltseg_recipe("paper"), VLTSEG_SYN)


def test_frozen_m2f_trains_with_reins_gta_recipe_for_any_source():
    cls = get_method_class("frozen_m2f")
    assert_recipe(cls.recipe(source="cityscapes"), REIN_GTA)
    assert_recipe(cls.recipe(source="cityscapes", scale="miniature"), mini(REIN_GTA, REIN_MINI))


def test_tqdm_recipe_names_the_config_of_its_backbone():
    cls = get_method_class("tqdm")
    clip = {**TQDM_GTA, "source": TQDM_GTA["source"].replace("configs/tqdm/tqdm_eva_vit-l_1e-5_20k-g2c-512.py",
                                                             TQDM_CLIP_GTA)}
    assert_recipe(cls.recipe(backbone="clip_vitb16"), clip)
    city = cls.recipe(source="cityscapes", backbone="clip_vitb16")
    assert city.source == (f"ByeongHyunPak/tqdm {TQDM_CLIP_GTA} (C-source optimizer of the EVA config; no CLIP "
                           "C-source config is released) (+ _base_/schedules/schedule_20k.py); fp32")
    assert_recipe(tqdm_recipe("synthia", "paper", "clip_vitb16"), clip)
    # a backbone without a reference config of its own names the EVA02 one
    assert_recipe(tqdm_recipe("cityscapes", "paper", "another_vit"), TQDM_CITY)
    # the recipe holds its own copy of the rare-class sampling settings
    assert tqdm_recipe().rare_class_sampling is not TQDM_RARE_CLASS_SAMPLING


@pytest.mark.parametrize("function", [rein_recipe, set_recipe, vireo_recipe, vltseg_recipe])
def test_keyword_changes_apply_last(function):
    """``*_recipe(scale, source, **changes)``: the changes override the (miniature) recipe; None keeps a field."""
    source = "gta5"
    base = function("miniature", source)
    changed = function("miniature", source, lr=0.5, iterations=7, grad_clip=None)
    assert changed == dataclasses.replace(base, lr=0.5, iterations=7)
    assert function("paper", source, batch_size=3).batch_size == 3


@pytest.mark.parametrize("call,message", [
    (lambda: rein_recipe("paper", "synthia"),
     "Rein has a training recipe for sources ('gta5', 'cityscapes'), not 'synthia'"),
    (lambda: rein_recipe("huge"), "unknown scale 'huge': use 'paper' or 'miniature'"),
    (lambda: set_recipe("paper", "synthia"),
     "SET has a training recipe for sources ('cityscapes', 'gta5'), not 'synthia'"),
    (lambda: set_recipe("huge"), "unknown scale 'huge': use 'paper' or 'miniature'"),
    (lambda: vireo_recipe("paper", "synthia"),
     "Vireo has a training recipe for sources ('gta5', 'cityscapes'), not 'synthia'"),
    (lambda: vireo_recipe("huge"), "unknown scale 'huge': use 'paper' or 'miniature'"),
    (lambda: tqdm_recipe("acdc"), "tqdm has no recipe for source 'acdc'; expected gta5, synthia or cityscapes"),
    (lambda: tqdm_recipe("gta5", "huge"), "unknown scale 'huge': use 'paper' or 'miniature'"),
    (lambda: vltseg_recipe("paper", "acdc"),
     "VLTSeg has a training recipe for sources ('gta5', 'synthia', 'cityscapes'), not 'acdc'"),
    (lambda: vltseg_recipe("huge"), "unknown scale 'huge': use 'paper' or 'miniature'"),
    (lambda: famix_recipe("acdc"), "FAMix has no recipe for source 'acdc'; expected gta5, synthia or cityscapes"),
    (lambda: famix_recipe("gta5", "huge"), "unknown scale 'huge': use 'paper' or 'miniature'"),
])
def test_recipe_errors_in_full(call, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        call()


# ------------------------------------------------------------------------------------------ param_groups
class _NormWithAdapter(nn.LayerNorm):
    """A normalisation layer holding another layer: only its own weight and bias are norm parameters."""

    def __init__(self, dim):
        super().__init__(dim)
        self.adapter = nn.Linear(dim, dim, bias=False)


class _Toy(Method):
    name = "toy"

    def __init__(self):
        super().__init__(MethodConfig())
        self.text_encoder = nn.Linear(2, 2, bias=False)
        self.backbone = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 2, bias=False))
        self.backbone[2].weight.requires_grad_(False)  # frozen, between trainable parameters
        self.head = nn.ModuleDict(dict(gn=nn.GroupNorm(1, 2), bn=nn.BatchNorm2d(2), ln=_NormWithAdapter(2),
                                       proj=nn.Linear(2, 2, bias=False)))
        self.head_embed = nn.Parameter(torch.zeros(2))

    @classmethod
    def default_config(cls, backbone=None, *, scale="paper"):
        return MethodConfig()

    @classmethod
    def recipe(cls, *, source="gta5", scale="paper", backbone=None):
        return TrainRecipe()

    def training_step(self, images, labels):
        return {}

    def predict(self, images):
        return images


def _groups_by_hand(groups):
    return [{k: (v if k != "params" else [id(p) for p in v]) for k, v in g.items()} for g in groups]


def test_param_groups_listed_by_hand():
    toy = _Toy()
    params = dict(toy.named_parameters())
    recipe = TrainRecipe(lr=0.5, weight_decay=0.25, norm_decay_mult=0.5, param_rules=(
        ParamRule("text_encoder", lr_mult=0.0), ParamRule("backbone.0", lr_mult=0.1, decay_mult=2.0),
        ParamRule("backbone", lr_mult=0.1), ParamRule("embed", decay_mult=0.0)))

    def group(lr_mult, decay_mult, names):
        return {"params": [id(params[n]) for n in names], "names": names, "lr_mult": lr_mult, "decay_mult": decay_mult,
                "lr": 0.5 * lr_mult, "weight_decay": 0.25 * decay_mult}

    expected = [  # in the order of named_parameters(): the toy's own parameter first
        group(1.0, 0.0, ["head_embed"]),
        group(0.1, 2.0, ["backbone.0.weight", "backbone.0.bias"]),  # the first matching rule wins
        group(0.1, 1.0, ["backbone.1.weight", "backbone.1.bias"]),  # a rule beats the norm multiplier
        group(1.0, 0.5, ["head.gn.weight", "head.gn.bias", "head.bn.weight", "head.bn.bias", "head.ln.weight",
                         "head.ln.bias"]),  # GroupNorm, BatchNorm, LayerNorm (subclass): norm_decay_mult
        group(1.0, 1.0, ["head.ln.adapter.weight", "head.proj.weight"]),  # a layer inside a norm is not a norm
    ]  # text_encoder (lr 0) and the frozen backbone.2 are left out
    got = toy.param_groups(recipe)
    assert _groups_by_hand(got) == expected
    assert [list(g) for g in got] == [["params", "names", "lr_mult", "decay_mult", "lr", "weight_decay"]] * 5
    # the same toy under the default multipliers: norms keep decay 0, everything else decays
    plain = toy.param_groups(TrainRecipe(lr=2.0, weight_decay=0.5))
    assert [(g["lr"], g["weight_decay"], len(g["names"])) for g in plain] == [(2.0, 0.5, 6), (2.0, 0.0, 8)]
    assert plain[0]["names"] == ["head_embed", "text_encoder.weight", "backbone.0.weight", "backbone.0.bias",
                                 "head.ln.adapter.weight", "head.proj.weight"]


class _ToyVLTSeg(VLTSeg):
    """VLTSeg's ``param_groups`` on a hand-made module (no model built)."""

    def __init__(self):
        Method.__init__(self, MethodConfig())
        self.backbone = nn.ModuleDict(dict(norm=_NormWithAdapter(2), proj=nn.Linear(2, 2, bias=False)))
        self.backbone_neck = nn.LayerNorm(2)  # starts with "backbone" but is not under "backbone."
        self.decode_head = nn.ModuleDict(dict(norm=nn.LayerNorm(2), query_embed=nn.Embedding(1, 2)))
        self.norm = nn.LayerNorm(2)


def test_vltseg_param_groups_expand_the_backbone_norm_rule():
    toy = _ToyVLTSeg()
    recipe = TrainRecipe(lr=1.0, weight_decay=0.5, norm_decay_mult=0.25, param_rules=(
        ParamRule("decode_head.query_embed", decay_mult=0.0), ParamRule("backbone.[norm]", lr_mult=0.1, decay_mult=0.0),
        ParamRule("backbone.", lr_mult=0.1)))
    assert expand_norm_rules(toy, recipe.param_rules) == (
        ParamRule("decode_head.query_embed", 1.0, 0.0), ParamRule("backbone.norm.weight", 0.1, 0.0),
        ParamRule("backbone.norm.bias", 0.1, 0.0), ParamRule("backbone.", 0.1, 1.0))
    got = {n: (g["lr"], g["weight_decay"]) for g in toy.param_groups(recipe) for n in g["names"]}
    assert got == {"backbone.norm.weight": (0.1, 0.0), "backbone.norm.bias": (0.1, 0.0),
                   "backbone.norm.adapter.weight": (0.1, 0.5), "backbone.proj.weight": (0.1, 0.5),
                   "backbone_neck.weight": (1.0, 0.125), "backbone_neck.bias": (1.0, 0.125),
                   "decode_head.norm.weight": (1.0, 0.125), "decode_head.norm.bias": (1.0, 0.125),
                   "decode_head.query_embed.weight": (1.0, 0.0),
                   "norm.weight": (1.0, 0.125), "norm.bias": (1.0, 0.125)}
    assert recipe.param_rules[1].key == "backbone.[norm]"  # the recipe itself is left as it was
    # a norm layer at the top (empty prefix): its parameters are named without a leading dot
    assert expand_norm_rules(nn.LayerNorm(2), (ParamRule("[norm]", 0.5, 0.0),)) == (
        ParamRule("weight", 0.5, 0.0), ParamRule("bias", 0.5, 0.0))
