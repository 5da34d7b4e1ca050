"""Profiles (harmonised / released), --precision, --cfg-options, nearest recipes, checkpoint selection
(runners.profiles, runners.options, runners.run, runners.train, runners.sweep)."""

import json
import re

import pytest
import torch

from benchmarks.numerics import Numerics
from benchmarks.protocols import list_protocols
from methods.base import TrainRecipe
from methods.registry import create_method, get_method_class, list_methods
from runners import run as run_mod
from runners.options import UsageError, apply_overrides, parse_cfg_options
from runners.profiles import HARMONISED_RUN, NOTES, RELEASED
from runners.train import Trainer


def resolve(*argv):
    args = run_mod.build_parser().parse_args(["--dry-run", *argv])
    return run_mod.resolve(args, log=lambda *_: None)


# ---------------------------------------------------------------------------------------------- the table
def test_every_released_setting_cites_an_official_file_and_line_and_names_a_real_key():
    assert set(RELEASED) == set(list_methods())
    for method, settings in RELEASED.items():
        cls = get_method_class(method)
        config, recipe = cls.default_config(scale="paper"), cls.recipe(source="gta5")
        for s in settings:
            assert re.search(r"\.(py|sh|md):\d+", s.source) or s.source.startswith("VLTSeg recipe"), (method, s)
            section, _, path = s.key.partition(".")
            if section == "run":
                assert path in HARMONISED_RUN
            else:
                target = config if section == "model" else recipe
                for name in path.split("."):
                    target = getattr(target, name)  # raises on a key that does not exist


@pytest.mark.parametrize("method,expected", [
    # values read from the official repositories (file:line in runners.profiles), written out here
    ("rein", dict(seed=42, precision="fp32", variant="rein")),
    ("set", dict(seed=42, precision="fp32", variant="rein", model={"fft_axes": "batch_channel"})),
    ("vireo", dict(seed=42, precision="fp32", variant="rein")),
    ("tqdm", dict(seed=2023, precision="fp32", variant="tqdm",
                  model={"gamma_init": "reference", "vl_loss_average": "all", "reg_copy_train_mode": True})),
    ("famix", dict(seed=1, precision="fp32", variant="famix", recipe={"select_interval": 750})),
    ("vltseg", dict(seed=0, precision="fp32", variant="vltseg")),
])
def test_released_profile_sets_the_official_values(method, expected):
    harmonised, released = resolve("--method", method), resolve("--method", method, "--profile", "released")
    assert (harmonised.seed, harmonised.precision, harmonised.protocol.variant) == (0, "bf16", "default")
    assert (released.seed, released.precision, released.protocol.variant) == (
        expected["seed"], expected["precision"], expected["variant"])
    for key, value in expected.get("model", {}).items():
        assert released.spec["model"][key] == value and harmonised.spec["model"][key] != value
    for key, value in expected.get("recipe", {}).items():
        assert released.spec["recipe"][key] == value and key not in harmonised.spec["recipe"]
    assert released.spec["profile"] == "released" and released.spec_hash != harmonised.spec_hash


def test_explicit_options_win_over_the_profile():
    run = resolve("--method", "tqdm", "--profile", "released", "--seed", "5", "--precision", "bf16",
                  "--eval-variant", "default", "--cfg-options", "model.gamma_init=small")
    assert (run.seed, run.precision, run.protocol.variant, run.config.gamma_init) == (5, "bf16", "default", "small")


def test_harmonised_spec_hashes_are_those_of_earlier_runs():
    """Adding profile/precision/cfg_options to the spec must not move the hashes of harmonised runs (sweep cells
    and records keep their keys); the values are the hashes main computed before these options existed."""
    # Rein's moved once, on purpose: its recipe gained mmengine's poly schedule (776ecc77e5cc86a4 before)
    assert resolve("--method", "rein").spec_hash == "8a50b78d91f58605"
    assert resolve("--method", "tqdm", "--protocol", "city2bm").spec_hash == "285aca6aa9ab2a8a"
    assert resolve("--method", "famix", "--protocol", "syn2cbm").spec_hash == "5196ce8e7f21f992"
    assert resolve("--method", "rein", "--precision", "fp32").spec_hash != "8a50b78d91f58605"


def test_dry_run_prints_every_difference_with_its_official_source(capsys):
    assert run_mod.main(["--method", "set", "--protocol", "gta2cbm", "--profile", "released", "--dry-run"]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    keys = {d["key"] for d in info["profile_differences"]}
    assert keys == {"run.seed", "run.precision", "run.eval_variant", "model.fft_axes"}
    assert "model.fft_axes: harmonised 'spatial' -> released 'batch_channel'" in captured.err
    assert "rein/models/backbones/reins.py:246" in captured.err
    assert info["precision"] == "fp32" and info["seed"] == 42


def test_vireo_depth_encoder_is_the_patch16_one_in_both_profiles():
    """The official code's DA-V2 runs at patch 16 / 32x32 once Initial_DA.md's edit is made (without it the
    submodule's PatchEmbed rejects 512 px inputs): both profiles build that encoder, and the finding is a note."""
    for profile in ("harmonised", "released"):
        depth = resolve("--method", "vireo", "--profile", profile).config.depth_vit
        assert (depth.patch_size, depth.img_size, depth.grid_size) == (16, 512, (32, 32))
    assert any("Initial_DA.md" in n and "patch_embed.py:73" in n for n in NOTES["vireo"])


# ---------------------------------------------------------------------------------------------- cfg-options
def test_cfg_options_are_typed_and_recorded():
    base = resolve("--method", "rein")
    run = resolve("--method", "rein", "--cfg-options", "model.head.num_queries=50", "model.token_length=50",
                  "recipe.iterations=100", "recipe.crop_size=(256, 256)", "recipe.grad_clip=None",
                  "model.use_softmax=false")
    assert run.config.head.num_queries == 50 and isinstance(run.config.head.num_queries, int)
    assert run.recipe.iterations == 100 and run.recipe.crop_size == (256, 256) and run.recipe.grad_clip is None
    assert run.config.use_softmax is False
    assert run.spec["cfg_options"][0] == "model.head.num_queries=50"
    assert run.spec["model"]["head"]["num_queries"] == 50 and run.spec_hash != base.spec_hash
    lr = resolve("--method", "rein", "--cfg-options", "recipe.lr=1")
    assert lr.recipe.lr == 1.0 and isinstance(lr.recipe.lr, float)


@pytest.mark.parametrize("option,message", [
    ("model.num_queries=50", "unknown key (did you mean model.head.num_queries?); valid keys: model."),
    ("recipe.iterations=many", "expected int"),
    ("model.fft_axes=x", "unknown key"),  # rein has no fft_axes
    ("recipe.crop_size=(1, 2, 3)", "expected tuple"),
    ("model.head.decoder_order=sideways", "decoder_order"),  # the config's own check
    ("iterations=3", "keys start with model. or recipe."),
])
def test_bad_cfg_options_are_one_line_errors_with_exit_code_2(option, message, capsys):
    assert run_mod.main(["--method", "rein", "--dry-run", "--cfg-options", option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --cfg-options") and "\n" not in err and message in err


def test_apply_overrides_reaches_nested_frozen_configs():
    cls = get_method_class("set")
    config, recipe = cls.default_config(scale="miniature"), cls.recipe(scale="miniature")
    config2, recipe2 = apply_overrides(config, recipe, parse_cfg_options(
        ["model.vit.drop_path=0.2", "model.fft_axes=batch_channel", "recipe.augmentation={'flip': False}"]))
    assert config2.vit.drop_path == 0.2 and config.vit.drop_path == 0.0  # originals untouched
    assert config2.fft_axes == "batch_channel" and recipe2.augmentation == {"flip": False}
    with pytest.raises(UsageError, match="recipe.param_rules: unknown key"):
        apply_overrides(config, recipe, parse_cfg_options(["recipe.param_rules=()"]))


# ---------------------------------------------------------------------------------------------- nearest recipe
@pytest.mark.parametrize("method", ["rein", "set", "vireo"])
def test_a_source_without_a_paper_recipe_borrows_the_nearest(method, capsys):
    args = run_mod.build_parser().parse_args(["--method", method, "--protocol", "syn2cbm", "--dry-run"])
    run = run_mod.resolve(args)
    line = capsys.readouterr().out
    assert f"{method} has no synthia recipe in its paper; using its gta5 recipe" in line
    assert run.spec["recipe_origin"]["source"] == "synthia" and run.spec["recipe_origin"]["recipe_source"] == "gta5"
    assert run.recipe == get_method_class(method).recipe(source="gta5")
    assert run.protocol.source.dataset == "synthia"


def test_sweep_plans_every_method_on_every_protocol():
    from runners.sweep import Grid, plan_cells

    cells = plan_cells(Grid(methods=["all"], protocols=["all"], variants=[], seeds=[]), log=lambda *_: None)
    assert {(c.labels["method"], c.labels["protocol"]) for c in cells} == {
        (m, p) for m in list_methods() for p in list_protocols()}
    released = plan_cells(Grid(methods=["famix", "rein"], protocols=["gta2cbm"], variants=[], seeds=[],
                               run_args=["--profile", "released"]), log=lambda *_: None)
    assert {(c.labels["method"], c.labels["seed"], c.labels["variant"], c.labels["profile"]) for c in released} == {
        ("famix", 1, "famix", "released"), ("rein", 42, "rein", "released")}


# ---------------------------------------------------------------------------------------------- trainer
class _Toy(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        i, seed = index
        g = torch.Generator().manual_seed(seed)
        return {"image": torch.rand(3, 32, 32, generator=g) * 255, "label": torch.randint(0, 19, (32, 32), generator=g),
                "name": str(i)}


def _toy_trainer(tmp_path, *, numerics=None, validate=None, select_interval=0, iterations=6):
    torch.manual_seed(0)
    method = create_method("frozen_m2f", scale="miniature")
    recipe = TrainRecipe(iterations=iterations, batch_size=2, lr=1e-3, checkpoint_interval=100, log_interval=1,
                         select_interval=select_interval)
    return method, Trainer(method, recipe, _Toy(), out_dir=tmp_path, seed=3, device=torch.device("cpu"),
                           spec_hash="t", progress=False, log=lambda *_: None, numerics=numerics, validate=validate)


def test_trainer_runs_the_forward_pass_under_the_runs_precision(tmp_path, monkeypatch):
    seen = []
    for numerics in (Numerics("bf16", torch.bfloat16, False, False), Numerics("fp32", None, False, False)):
        method, trainer = _toy_trainer(tmp_path / numerics.precision, numerics=numerics, iterations=1)
        real = method.training_step

        def step(images, labels, real=real):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return real(images, labels)

        monkeypatch.setattr(method, "training_step", step)
        trainer.run(resume=False)
    assert seen == [(True, torch.bfloat16), (False, seen[1][1])]


def test_checkpoint_selection_keeps_the_best_validated_model_without_changing_training(tmp_path):
    scores = iter([30.0, 70.0, 50.0])
    snapshots = {}

    def validate(iteration):
        snapshots[iteration] = {k: v.clone() for k, v in method.checkpoint_state_dict().items()}
        torch.rand(5)  # selection must not move the training RNG stream
        return next(scores)

    method, trainer = _toy_trainer(tmp_path / "sel", validate=validate, select_interval=2)
    result = trainer.run(resume=False)
    assert result.selection["history"] == [[2, 30.0], [4, 70.0], [6, 50.0]]
    assert (result.selection["best_iteration"], result.selection["best_miou"]) == (4, 70.0)
    best = torch.load(tmp_path / "sel" / "checkpoints" / "best.pt", weights_only=False)
    assert best["iteration"] == 4
    for k, v in snapshots[4].items():
        torch.testing.assert_close(best["model"][k], v)
    assert any(not torch.equal(snapshots[4][k], snapshots[6][k]) for k in snapshots[4])

    _, plain = _toy_trainer(tmp_path / "plain")
    assert plain.run(resume=False).selection is None
    log = lambda p: [json.loads(line)["loss"] for line in (p / "train_log.jsonl").read_text().splitlines()]
    assert log(tmp_path / "sel") == log(tmp_path / "plain")


def test_runner_records_profile_precision_and_evaluates_the_selected_checkpoint(tmp_path, monkeypatch, capsys):
    real = run_mod.split_dataset
    monkeypatch.setattr(run_mod, "split_dataset", lambda resolved, split, transform: (
        real(resolved, split, transform) if split is resolved.protocol.source else
        torch.utils.data.Subset(real(resolved, split, transform), [0])))  # one image per evaluation split
    out = tmp_path / "run"
    assert run_mod.main(["--method", "frozen_m2f", "--iters", "2", "--batch-size", "2", "--no-progress",
                         "--out", str(out), "--cfg-options", "recipe.select_interval=1"]) == 0
    record = json.loads((out / "result.json").read_text())
    assert (record["profile"], record["precision"], record["numerics"]["autocast"]) == ("harmonised", "bf16", "none")
    selection = record["train"]["selection"]
    assert [it for it, _ in selection["history"]] == [1, 2] and selection["interval"] == 1
    assert record["spec"]["recipe"]["select_interval"] == 1
    assert record["spec"]["cfg_options"] == ["recipe.select_interval=1"]
    assert f"evaluating the model of iteration {selection['best_iteration']}" in capsys.readouterr().out
