"""Profiles: ``--profile harmonised`` (default) or ``--profile released``.

``harmonised`` runs every method under the same conventions, so that results are comparable: seed 0, bf16
autocast on a GPU, the harmonised evaluation variant, the paper's intent where the released code deviates
from it. ``released`` does what each official repository does for that method: the settings below, each
with the official file and line it comes from, are applied on top of the harmonised configuration. They are
data: :data:`RELEASED` maps a method to its :class:`Setting` rows; ``runners.run --dry-run`` prints every
row on which the two profiles differ.

Keys: ``model.<field path>`` and ``recipe.<field>`` go through :func:`runners.options.apply_overrides`
(the same path as ``--cfg-options``); ``run.seed``, ``run.precision`` and ``run.eval_variant`` are runner
settings. ``run.eval_variant`` = :data:`FROM_RECIPE` means the recipe's own ``eval_variant`` (the paper's
evaluation pipeline). Explicit command-line values (``--seed``, ``--precision``, ``--eval-variant``,
``--cfg-options``) win over either profile.

:data:`NOTES` are official-code findings that need no setting (printed by ``--dry-run`` and recorded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from benchmarks.protocols import list_variants
from methods.registry import get_method_class
from runners.options import UsageError

if TYPE_CHECKING:  # torch-free at import: runners.run parses its arguments before torch is imported
    from methods.base import Method, TrainRecipe

PROFILES = ("harmonised", "released")
DEFAULT_PROFILE = "harmonised"
FROM_RECIPE = "<recipe.eval_variant>"

HARMONISED_RUN: dict[str, Any] = {"seed": 0, "precision": "bf16", "eval_variant": "default"}
"""The runner settings of the harmonised profile."""

NEAREST_SOURCE: dict[str, tuple[str, ...]] = {
    "synthia": ("gta5", "cityscapes"),  # synthetic -> synthetic first
    "gta5": ("synthia", "cityscapes"),
    "cityscapes": ("gta5",),
}
"""Where a method without a recipe for a source domain borrows one, nearest first."""


@dataclass(frozen=True)
class Setting:
    """One released-code setting: ``key`` takes ``value`` (in ``sources`` only, when given), because of
    ``source`` (official repository, file:line)."""

    key: str
    value: Any
    source: str
    sources: tuple[str, ...] = ()

    def applies_to(self, source_domain: str) -> bool:
        return not self.sources or source_domain in self.sources


_REIN = "w1oves/Rein"
_SET = "JingjunYi/SET"
_VIREO = "anonymouse-9c53tp182bvz/Vireo"
_TQDM = "ByeongHyunPak/tqdm"
_FAMIX = "astra-vision/FAMix"


def _mmseg1(repo: str, runtime: str, config: str, test: str) -> tuple[Setting, ...]:
    """Seed, precision and evaluation of an mmseg-1.x repository (Rein and its forks)."""
    return (
        Setting("run.seed", 42, f"{repo} {runtime} (randomness seed=42)"),
        Setting("run.precision", "fp32", f"{repo} {config} (optim_wrapper without AmpOptimWrapper: fp32)"),
        Setting("run.eval_variant", FROM_RECIPE, f"{repo} {test} (test pipelines of the recipe's config)"),
    )


_REIN_TEST = "configs/_base_/datasets/dg_gta_512x512.py:15-29"


RELEASED: dict[str, tuple[Setting, ...]] = {
    "rein": _mmseg1(_REIN, "configs/_base_/default_runtime.py:18",
                    "configs/dinov2/rein_dinov2_mask2former_512x512_bs1x4.py:26", _REIN_TEST),
    "frozen_m2f": _mmseg1(_REIN, "configs/_base_/default_runtime.py:18",
                          "configs/frozen_vfms/dinov2-L_mask2former.py:27", _REIN_TEST),
    "set": _mmseg1(_SET, "configs/_base_/default_runtime.py:18",
                   "configs/my/citys_rein_dinov2_mask2former_512x512_bs1x4.py:26",
                   "configs/my/citys_rein_dinov2_mask2former_512x512_bs1x4.py:3") + (
        Setting("model.fft_axes", "batch_channel",
                f"{_SET} rein/models/backbones/reins.py:246 (fft2 over the last two axes of (N, B, C)) and :264"),
    ),
    "vireo": _mmseg1(_VIREO, "configs/_base_/default_runtime.py:17",
                     "configs/dinov2_domain/vireo_dinov2_mask2former_512x512_bs1x4.py:28",
                     "configs/_base_/datasets/dg_gta_512x512.py:15-29"),
    "tqdm": (
        Setting("run.seed", 2023, f"{_TQDM} dist_train.sh:9 (--seed 2023)"),
        Setting("run.precision", "fp32", f"{_TQDM} configs/_base_/schedules/schedule_20k.py:1 (optimizer_config "
                                         "without fp16)"),
        Setting("run.eval_variant", FROM_RECIPE, f"{_TQDM} configs/tqdm/tqdm_eva_vit-l_1e-5_20k-g2c-512.py:176 "
                                                 "(test_cfg slide 512/341)"),
        Setting("model.gamma_init", "reference", f"{_TQDM} models/segmentors/tqdm_eva_clip.py:69 "
                                                 "(trunc_normal_ re-initialises gamma; tqdm_clip.py:81)"),
        Setting("model.vl_loss_average", "all", f"{_TQDM} configs/tqdm/tqdm_eva_vit-l_1e-5_20k-g2c-512.py:173 "
                                                "(CrossEntropyLoss, mmseg/models/losses/cross_entropy_loss.py:220 "
                                                "avg_non_ignore=False)"),
        Setting("model.reg_copy_train_mode", True, f"{_TQDM} models/segmentors/tqdm_eva_clip.py:73 (reg_E0.eval() "
                                                   "once; the runner's model.train() undoes it)"),
    ),
    "famix": (
        Setting("run.seed", 1, f"{_FAMIX} main.py:60 (--random_seed default 1)"),
        Setting("run.precision", "fp32", f"{_FAMIX} main.py:275 (plain loss.backward(), no autocast)"),
        Setting("run.eval_variant", FROM_RECIPE, f"{_FAMIX} main.py:78 (validate(): whole image)"),
        Setting("recipe.select_interval", 750, f"{_FAMIX} main.py:62 (--val_interval 750) and main.py:290-307 "
                                               "(validate on the source val split, keep the best)"),
    ),
    "vltseg": (
        Setting("run.precision", "fp32", "VLTSeg recipe (methods.vltseg.vltseg_recipe: seed 0, fp32)"),
        Setting("run.eval_variant", FROM_RECIPE, "VLTSeg recipe (slide 512/426 at 1024x512)"),
    ),
}
"""Per method, the settings in which the released code differs from the harmonised profile."""

NOTES: dict[str, tuple[str, ...]] = {
    "vireo": (
        "Depth-Anything-V2 encoder: the released code builds DA-V2 from its git submodule "
        f"(vireo/models/backbones/vireo_dinov2.py:78), whose DINOv2() is img_size=518, patch_size=14 "
        "(Depth-Anything-V2 depth_anything_v2/dinov2.py:407-408), and loads a DA-V2 checkpoint converted to "
        "patch 16 / 32x32 (tools/convert_models/convert_dinov2_depth.py:117-122). Unedited, that encoder "
        "stops at its first 512 px input (depth_anything_v2/dinov2_layers/patch_embed.py:73: 512 % 14 != 0; "
        "only python -O, which strips asserts, would run it); "
        f"{_VIREO} README.md:32 tells users to edit DINOv2() to img_size=512, patch_size=16 "
        "(vireo/models/backbones/third_party/Initial_DA.md), after which the converted checkpoint loads "
        "completely and the 32x32 = 1024 depth tokens match DINOv2's (the linear token resampling, "
        "vireo/models/backbones/vireo.py:145-150, is the identity). Both profiles run that encoder.",
    ),
    "famix": ("The paper reports the mean of 3 runs; run 3 seeds (e.g. runners.sweep --seeds 1,2,3).",),
}


def released_settings(method: str, source_domain: str) -> list[Setting]:
    """The released-profile settings of ``method`` when it trains on ``source_domain``."""
    return [s for s in RELEASED.get(method, ()) if s.applies_to(source_domain)]


def settings_for(profile: str, method: str, source_domain: str) -> list[Setting]:
    """The profile's settings on top of the harmonised configuration (none for ``harmonised``)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return released_settings(method, source_domain) if profile == "released" else []


def method_recipe(cls: type[Method], source: str, scale: str, backbone: str, log=print
                  ) -> tuple[TrainRecipe, dict[str, str] | None]:
    """The method's recipe for ``source``; where its paper has none, the nearest source's (profiles.NEAREST_SOURCE),
    said in one line and returned as the origin ``{"source": ..., "recipe_source": ..., "recipe": ...}``."""
    try:
        return cls.recipe(source=source, scale=scale, backbone=backbone), None
    except ValueError:
        pass
    for nearest in NEAREST_SOURCE.get(source, ()):
        try:
            recipe = cls.recipe(source=nearest, scale=scale, backbone=backbone)
        except ValueError:
            continue
        log(f"note: {cls.name} has no {source} recipe in its paper; using its {nearest} recipe ({recipe.source})")
        return recipe, {"source": source, "recipe_source": nearest, "recipe": recipe.source}
    raise UsageError(f"{cls.name} has no training recipe for source {source} nor a nearby one")


def eval_variant_for(protocol: str, explicit: str | None, profile_variant: str, recipe: TrainRecipe,
                     log=print) -> str:
    """``explicit`` (``--eval-variant``; it must exist) when given, else the profile's: ``default``, or the
    recipe's own variant in the released profile (``default`` with a note where the protocol lacks it)."""
    variants = list_variants(protocol)
    if explicit is not None:
        if explicit not in variants:
            raise UsageError(f"--eval-variant {explicit}: protocol {protocol} has variants {', '.join(variants)}")
        return explicit
    variant = recipe.eval_variant if profile_variant == FROM_RECIPE else profile_variant
    if variant not in variants:
        log(f"note: protocol {protocol} has no {variant!r} evaluation variant (the recipe's); "
            "evaluating with 'default'")
        variant = "default"
    return variant


def profile_differences(method: str, source: str, backbone: str | None = None, scale: str = "paper"
                        ) -> list[dict[str, Any]]:
    """Every setting in which the released profile differs from the harmonised one for ``method`` trained on
    ``source``: key, harmonised value, released value, official file:line."""
    cls = get_method_class(method)
    backbone = backbone or cls.backbones[0]
    recipe, _ = method_recipe(cls, source, scale, backbone, log=lambda *_: None)
    config = cls.config_for_source(cls.default_config(backbone, scale=scale), source)
    rows = []
    for s in settings_for("released", method, source):
        section, _, path = s.key.partition(".")
        source_text = s.source
        if section == "run":
            before, after = HARMONISED_RUN[path], s.value
            if s.value == FROM_RECIPE:
                after, source_text = recipe.eval_variant, f"{s.source}: {recipe.source}"
        else:
            before, after = _get_path(config if section == "model" else recipe, path), s.value
        if before != after:
            rows.append({"key": s.key, "harmonised": before, "released": after, "source": source_text})
    return rows


def _get_path(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def format_profile_differences(method: str, rows: Sequence[dict[str, Any]], notes: Sequence[str] = ()) -> str:
    lines = [f"released vs harmonised profile of {method}: {len(rows)} setting(s) differ"]
    for r in rows:
        lines.append(f"  {r['key']}: harmonised {r['harmonised']!r} -> released {r['released']!r}  [{r['source']}]")
    lines += [f"  note: {n}" for n in notes]
    return "\n".join(lines)
