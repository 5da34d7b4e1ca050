"""The Trainer by value: the learning rate it actually uses, read from train_log.jsonl, against the mmcv formula
written out here (poly decay with per-group min_lr, linear warm-up, constant phase) at iterations 0, 1, the
warm-up end and the last one (a run-against-run comparison would pass an off-by-one in both runs); exact resume
of a killed run; pinned data order and augmentation seeds."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Method, MethodConfig, TrainRecipe
from runners.train import Trainer, lr_factor


def poly_with_warmup(step, *, base, total, power, min_lr=0.0, warmup=0, ratio=1e-6, constant=0):
    """mmcv PolyLrUpdaterHook + linear warm-up, for 0-based ``step`` (the step the LR is applied to)."""
    progress = 0.0 if step < constant else (step - constant) / (total - constant)
    floor = min(min_lr, base)
    lr = (base - floor) * (1.0 - progress) ** power + floor
    if step < warmup:
        lr *= 1.0 - (1.0 - step / warmup) * (1.0 - ratio)
    return lr


RECIPE = TrainRecipe(iterations=8, batch_size=2, lr=0.1, schedule="poly", power=0.9, min_lr=0.01, warmup_iters=3,
                     warmup_ratio=0.1, checkpoint_interval=100, log_interval=1)


class OneConv(Method):
    name = "one_conv"

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        self.head = nn.Conv2d(3, config.num_classes, 1)

    @classmethod
    def default_config(cls, backbone=None, *, scale="paper"):
        return MethodConfig(backbone="toy", scale=scale)

    @classmethod
    def recipe(cls, *, source="gta5", scale="paper", backbone=None):
        return RECIPE

    def training_step(self, images, labels):
        return {"loss_ce": F.cross_entropy(self.head(self.normalize(images)), labels)}

    def predict(self, images):
        return self.head(self.normalize(images))


class Data:
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(6, 3, 8, 8, generator=g) * 255
        self.labels = torch.randint(0, 19, (6, 8, 8), generator=g)

    def __len__(self):
        return 6

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        return {"image": self.images[i], "label": self.labels[i], "name": str(i)}


def _logged_lr(out_dir, recipe):
    torch.manual_seed(0)
    Trainer(OneConv(OneConv.default_config()), recipe, Data(), out_dir=out_dir, seed=0, device=torch.device("cpu"),
            spec_hash="lr", progress=False, log=lambda *_: None).run(resume=False)
    lines = (out_dir / "train_log.jsonl").read_text().splitlines()
    return {e["iteration"]: e["lr"] for e in map(json.loads, lines)}


def test_logged_lr_follows_the_written_out_formula(tmp_path):
    logged = _logged_lr(tmp_path, RECIPE)
    assert sorted(logged) == list(range(1, 9))  # entry "iteration" n = after n steps; it used step n-1's LR
    expected = {1: 0.1 * 0.1,  # step 0: warm-up starts at base * warmup_ratio (poly factor 1 at t=0)
                2: (1 - (1 - 1 / 3) * 0.9) * ((0.1 - 0.01) * (1 - 1 / 8) ** 0.9 + 0.01),  # step 1
                4: (0.1 - 0.01) * (1 - 3 / 8) ** 0.9 + 0.01,  # step 3 = warm-up end: plain poly
                8: (0.1 - 0.01) * (1 - 7 / 8) ** 0.9 + 0.01}  # last step
    for it, lr in expected.items():
        assert logged[it] == pytest.approx(lr, rel=1e-12), it
    for it, lr in logged.items():
        assert lr == pytest.approx(poly_with_warmup(it - 1, base=0.1, total=8, power=0.9, min_lr=0.01, warmup=3,
                                                    ratio=0.1), rel=1e-12), it


def test_constant_phase_then_poly_as_logged(tmp_path):
    recipe = TrainRecipe(iterations=6, batch_size=2, lr=0.2, schedule="poly", power=1.0, constant_iters=2,
                         checkpoint_interval=100, log_interval=1)
    logged = _logged_lr(tmp_path, recipe)
    assert [round(logged[i], 12) for i in range(1, 7)] == [0.2, 0.2, 0.2, 0.15, 0.1, 0.05]


@pytest.mark.parametrize("step", [0, 1, 2, 3, 5, 7])
def test_lr_factor_matches_formula_per_group(step):
    for base in (0.1, 0.01, 0.001):  # 0.001 < min_lr: that group stays at its base LR (mmcv per-group min)
        assert lr_factor(RECIPE, step, base) == pytest.approx(
            poly_with_warmup(step, base=base, total=8, power=0.9, min_lr=0.01, warmup=3, ratio=0.1), rel=1e-12)


def test_data_order_and_augmentation_seeds_are_pinned():
    """Sample g of epoch e is element g % N of numpy's permutation seeded [seed, e]; its augmentation seed is
    SeedSequence([seed, g]): values pinned, so a change of generator (or Python's hash()) is caught."""
    from datasets.sampling import sample_seed
    from runners.train import DeterministicSampler

    first = list(DeterministicSampler(10, 4, 3, seed=3))
    assert first[:5] == [(9, 1576890651), (6, 457190280), (0, 960329833), (2, 4253259675), (1, 2746448868)]
    assert [i for i, _ in first[:10]] == [9, 6, 0, 2, 1, 4, 7, 5, 3, 8]  # epoch 0 = permutation([3, 0])
    assert [s for _, s in first] == [sample_seed(3, g) for g in range(12)]
    assert sample_seed(3, 5) == 3746004709 and sample_seed(0, 0) == 2968811710


def _trainer(out_dir, recipe=RECIPE, spec_hash="lr", stop_after=None):
    torch.manual_seed(0)
    return Trainer(OneConv(OneConv.default_config()), recipe, Data(), out_dir=out_dir, seed=0,
                   device=torch.device("cpu"), spec_hash=spec_hash, progress=False, log=lambda *_: None,
                   stop_after=stop_after)


def test_killed_run_resumes_exactly(tmp_path):
    recipe = RECIPE.replace(checkpoint_interval=2)
    straight = _trainer(tmp_path / "a", recipe)
    straight.run(resume=False)
    killed = _trainer(tmp_path / "b", recipe, stop_after=5)
    result = killed.run(resume=False)
    assert result.iterations == 5 and result.resumed_from is None
    log = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["iteration"] for x in log] == [1, 2, 3, 4, 5]
    assert torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["iteration"] == 4
    resumed = _trainer(tmp_path / "b", recipe)
    result = resumed.run(resume=True)
    assert result.resumed_from == 4 and result.iterations == 8  # from the checkpoint at 4, not from 0 or 5
    a = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    b = (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
    timing = ("time", "it_per_s")  # wall-clock fields differ between runs

    def strip(lines):
        return [{k: v for k, v in json.loads(x).items() if k not in timing} for x in lines]

    assert strip(b) == strip(a)  # log entry 5 not doubled
    for k, v in straight.method.state_dict().items():
        assert torch.equal(v, resumed.method.state_dict()[k]), k
    again = _trainer(tmp_path / "b", recipe).run(resume=True)  # finished: nothing to do
    assert again.iterations == 8 and again.resumed_from == 8


def test_resume_refuses_a_checkpoint_of_another_spec(tmp_path):
    _trainer(tmp_path, RECIPE.replace(checkpoint_interval=2), stop_after=2).run(resume=False)
    with pytest.raises(RuntimeError, match="belongs to a different run spec .*use another --out"):
        _trainer(tmp_path, spec_hash="other").run(resume=True)


def test_fresh_start_appends_to_an_old_log(tmp_path):
    """Logs append (issue 12): the trainer never deletes a log; runners.outdir refuses a started folder without
    --resume and moves an old run's files to superseded/ with --force."""
    (tmp_path / "train_log.jsonl").write_text('{"iteration": 99}\n')
    _trainer(tmp_path, RECIPE.replace(iterations=2)).run(resume=False)
    assert [json.loads(x)["iteration"] for x in (tmp_path / "train_log.jsonl").read_text().splitlines()] == [99, 1, 2]
