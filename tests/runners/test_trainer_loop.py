"""runners.train piece by piece against values written out here (issue 19, mutation testing): the optimizer's
settings, one training step in plain torch (SGD, gradient clipping), the first two logged losses of a run
recomputed in plain torch, the log cadence and entry fields, checkpoint contents, the details of resume (RNG
per rank, log truncation, selection), stopping, the progress line and bar, seeding."""

import json
import random
import sys
import time

import numpy as np
import pytest
import torch
# the first optimizer.step imports torch._dynamo (~4 s); imported at collection, mutmut's fork server shares it
import torch._dynamo  # noqa: F401
import torch.nn.functional as F
from torch import nn

from methods.base import Method, MethodConfig, TrainRecipe
from runners import distributed
from runners.train import (
    DeterministicSampler,
    Trainer,
    TrainingStopped,
    build_optimizer,
    progress_line,
    rng_state,
    seed_everything,
    set_rng_state,
    train_step,
)

RECIPE = TrainRecipe(iterations=8, batch_size=2, lr=0.5, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                     schedule="constant", checkpoint_interval=100, log_interval=1)


class TwoLoss(Method):
    """A 1x1 conv (lr x1) and a scalar (lr x0.1, its own group): a cross-entropy and a small L2 term."""

    name = "two_loss"

    def __init__(self, config: MethodConfig, dropout: float = 0.0):
        super().__init__(config)
        self.head = nn.Conv2d(3, config.num_classes, 1)
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.dropout = dropout
        self.seen_training, self.seen_images = [], []

    @classmethod
    def default_config(cls, backbone=None, *, scale="paper"):
        return MethodConfig(backbone="toy", scale=scale)

    @classmethod
    def recipe(cls, *, source="gta5", scale="paper", backbone=None):
        return RECIPE

    def param_groups(self, recipe):
        return [{"params": list(self.head.parameters()), "lr": recipe.lr},
                {"params": [self.scale], "lr": recipe.lr * 0.1}]

    def training_step(self, images, labels):
        self.seen_training.append(self.training)
        self.seen_images.append(images.clone())
        x = F.dropout(self.normalize(images), self.dropout, training=self.dropout > 0)
        return {"loss_ce": F.cross_entropy(self.head(x) * self.scale, labels), "loss_l2": 0.01 * self.scale ** 2}

    def predict(self, images):
        return self.head(self.normalize(images)) * self.scale


class Data:
    def __init__(self, n=6, valid_size=None):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, 8, 8, generator=g) * 255
        self.labels = torch.randint(0, 19, (n, 8, 8), generator=g)
        self.valid_size = valid_size

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        item = {"image": self.images[i], "label": self.labels[i], "name": str(i)}
        if self.valid_size is not None:
            item["valid_size"] = self.valid_size
        return item


def make(out_dir, recipe=RECIPE, *, dropout=0.0, data=None, seed=0, **kwargs):
    torch.manual_seed(0)
    method = TwoLoss(TwoLoss.default_config(), dropout=dropout)
    kwargs.setdefault("log", lambda *_: None)
    trainer = Trainer(method, recipe, data or Data(), out_dir=out_dir, seed=seed, device=torch.device("cpu"),
                      spec_hash="h", progress=False, **kwargs)
    return method, trainer


def read_log(out_dir):
    return [json.loads(x) for x in (out_dir / "train_log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- optimizer
def test_build_optimizer_settings_per_recipe():
    torch.manual_seed(0)
    method = TwoLoss(TwoLoss.default_config())
    adamw = build_optimizer(method, RECIPE.replace(optimizer="adamw", lr=0.3, betas=(0.8, 0.95), eps=1e-7,
                                                   weight_decay=0.02))
    assert isinstance(adamw, torch.optim.AdamW)
    d = adamw.defaults
    assert (d["lr"], d["betas"], d["eps"], d["weight_decay"], d["fused"]) == (0.3, (0.8, 0.95), 1e-7, 0.02, None)
    assert [(g["lr"], g["initial_lr"]) for g in adamw.param_groups] == [(0.3, 0.3), (0.3 * 0.1, 0.3 * 0.1)]
    sgd = build_optimizer(method, RECIPE.replace(lr=0.2, momentum=0.7, weight_decay=0.001))
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (0.2, 0.7, 0.001)
    with pytest.raises(ValueError, match=r"^unknown optimizer 'lamb'$"):
        build_optimizer(method, RECIPE.replace(optimizer="lamb"))
    method.param_groups = lambda recipe: []
    with pytest.raises(ValueError, match=r"^two_loss has no trainable parameters$"):
        build_optimizer(method, RECIPE)


@pytest.mark.parametrize("cuda,fused", [((True, True), True), ((True, False), None), ((False, False), None)])
def test_adamw_is_fused_only_when_every_parameter_is_on_cuda(monkeypatch, cuda, fused):
    class FakeParam:
        def __init__(self, is_cuda):
            self.is_cuda = is_cuda

    seen = {}
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, **kw: seen.update(kw) or "adamw")
    method = TwoLoss(TwoLoss.default_config())
    method.param_groups = lambda recipe: [{"params": [FakeParam(cuda[0])], "lr": 1.0},
                                          {"params": [FakeParam(cuda[1])], "lr": 1.0}]
    assert build_optimizer(method, RECIPE.replace(optimizer="adamw")) == "adamw"
    assert seen["fused"] is fused


# ---------------------------------------------------------------------------------------------- one step
def test_train_step_is_sum_zero_grad_backward_clip_step_written_out():
    """SGD lr 1: p <- p - g * min(1, clip / (||g|| + 1e-6)), g the gradient of the summed losses."""
    w = torch.tensor([3.0, -4.0], requires_grad=True)
    b = torch.tensor([1.0], requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=1.0)
    entered = []

    class Ctx:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    def step(images, labels):
        return {"a": (w * images).sum(), "b": 2.0 * b.sum() * labels.sum()}

    x, y = torch.tensor([1.0, 2.0]), torch.tensor([0.5])
    total, losses, norm = train_step(step, opt, [w, b], x, y, autocast=Ctx(), grad_clip=1.0)
    assert entered == [True] and set(losses) == {"a", "b"}
    assert total.item() == pytest.approx((3 - 8) + 2 * 1 * 0.5)
    grad = torch.tensor([1.0, 2.0, 1.0])  # d/dw = x, d/db = 2 * 0.5
    assert norm.item() == pytest.approx(grad.norm().item())
    factor = 1.0 / (grad.norm().item() + 1e-6)
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, -4.0]) - factor * grad[:2])
    torch.testing.assert_close(b.detach(), torch.tensor([1.0]) - factor * grad[2:])
    # without clipping: no norm, the raw gradient; zero_grad first (no accumulation), gradients set to None so
    # a parameter that a step does not use is not moved (SGD with momentum would move a zero gradient)
    opt = torch.optim.SGD([w, b], lr=1.0, momentum=0.9)
    w0 = w.detach().clone()
    total, _, norm = train_step(lambda i, l: {"a": (w * i).sum()}, opt, [w, b], x, y, autocast=Ctx(),
                                grad_clip=None)
    assert norm is None and b.grad is None
    torch.testing.assert_close(w.detach(), w0 - x)
    b_before = b.detach().clone()
    train_step(lambda i, l: {"b": b.sum()}, opt, [w, b], x, y, autocast=Ctx(), grad_clip=None)
    train_step(lambda i, l: {"a": (w * i).sum()}, opt, [w, b], x, y, autocast=Ctx(), grad_clip=None)
    torch.testing.assert_close(b.detach(), b_before - 1.0)  # moved once by its own step only


# ---------------------------------------------------------------------------------------------- the loop
def test_first_two_logged_losses_recomputed_in_plain_torch(tmp_path):
    """Two SGD steps (lr 0.5 and 0.05, clip 0.5) written out: the batches are numpy's permutation seeded [0, 0]."""
    recipe = RECIPE.replace(iterations=2, grad_clip=0.5)
    method, trainer = make(tmp_path, recipe)
    data = Data()
    torch.manual_seed(0)
    ref = TwoLoss(TwoLoss.default_config())
    head_w, head_b, scale = (p.detach().clone().requires_grad_(True) for p in (ref.head.weight, ref.head.bias,
                                                                                 ref.scale))
    order = np.random.default_rng([0, 0]).permutation(6)
    expected = []
    for it in range(2):
        idx = order[2 * it:2 * it + 2]
        x = (data.images[idx] - ref._mean) / ref._std
        ce = F.cross_entropy(F.conv2d(x, head_w, head_b) * scale, data.labels[idx])
        l2 = 0.01 * scale ** 2
        (ce + l2).backward()
        grads = [head_w.grad, head_b.grad, scale.grad]
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        clip = min(1.0, 0.5 / (norm.item() + 1e-6))
        expected.append({"loss": (ce + l2).item(), "loss_ce": ce.item(), "loss_l2": l2.item(),
                         "grad_norm": norm.item()})
        with torch.no_grad():
            for p, lr in ((head_w, 0.5), (head_b, 0.5), (scale, 0.05)):
                p -= lr * clip * p.grad
                p.grad = None
    result = trainer.run(resume=False)
    log = read_log(tmp_path)
    assert [e["iteration"] for e in log] == [1, 2]
    for entry, exp in zip(log, expected):
        assert set(entry) == {"iteration", "loss", "loss_ce", "loss_l2", "lr", "time", "lr_groups", "it_per_s",
                              "grad_norm"}
        for k, v in exp.items():
            assert entry[k] == pytest.approx(v, rel=1e-5), k
        assert entry["lr"] == 0.5 and entry["lr_groups"] == [0.5, 0.5 * 0.1]
    torch.testing.assert_close(method.head.weight.detach(), head_w.detach())
    torch.testing.assert_close(method.scale.detach(), scale.detach())
    assert result.final_losses == pytest.approx({"loss_ce": log[1]["loss_ce"], "loss_l2": log[1]["loss_l2"]})
    assert all(method.seen_training)


def test_log_cadence_timing_fields_and_progress_lines(tmp_path):
    """Logged: iteration 1, every log_interval-th, and the last. it/s is measured between log lines."""
    lines, hooked = [], []
    method, trainer = make(tmp_path, RECIPE.replace(log_interval=3), log=lines.append, on_log=hooked.append)
    method.eval()  # the trainer switches to train mode itself
    before = time.perf_counter()
    result = trainer.run(resume=False)
    wall = time.perf_counter() - before
    log = read_log(tmp_path)
    assert hooked == log  # every log line also goes to the on_log hook (TensorBoard, W&B)
    assert result.seconds <= wall
    assert [e["iteration"] for e in log] == [1, 3, 6, 8] and "grad_norm" not in log[0]
    assert all(method.seen_training) and len(method.seen_training) == 8
    previous = (0, 0.0)
    for e in log:
        assert e["time"] > previous[1]
        assert e["it_per_s"] == pytest.approx((e["iteration"] - previous[0]) / (e["time"] - previous[1]), rel=1e-6)
        assert e["loss"] == pytest.approx(e["loss_ce"] + e["loss_l2"], rel=1e-6)
        previous = (e["iteration"], e["time"])
    assert lines == [progress_line(e, 8, 0, e["time"]) for e in log]
    assert lines[0].startswith("iter 1/8  loss ")
    assert result.iterations == 8 and result.resumed_from is None
    assert result.images_per_second == pytest.approx(8 * 2 / result.seconds, rel=1e-12)
    assert result.seconds >= log[-1]["time"] and result.selection is None


def test_checkpoint_contents_and_interval(tmp_path):
    out = tmp_path / "a" / "b"  # created with its parents
    _, trainer = make(out, RECIPE.replace(iterations=5, checkpoint_interval=2), stop_after=3)
    trainer.run(resume=False)
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert set(ckpt) == {"iteration", "model", "optimizer", "rng", "spec_hash"}  # no rng_per_rank, no selection
    assert ckpt["iteration"] == 2 and ckpt["spec_hash"] == "h" and set(ckpt["model"]) == {"head.weight",
                                                                                          "head.bias", "scale"}
    assert set(ckpt["rng"]) == {"torch", "python", "numpy"}
    _, trainer = make(out, RECIPE.replace(iterations=5, checkpoint_interval=2))
    trainer.run(resume=True)  # 3..5: saved at 4 and at the last iteration 5
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=False)["iteration"] == 5


def test_fresh_runs_are_seeded_and_dropout_resumes_exactly(tmp_path):
    """seed_everything on a fresh start (not on resume), the loader's own generator: a method that draws from
    the global torch RNG (dropout) gives the same losses straight, killed + resumed, and after other draws."""
    recipe = RECIPE.replace(checkpoint_interval=3)
    _, straight = make(tmp_path / "a", recipe, dropout=0.5)
    straight.run(resume=False)
    torch.manual_seed(123), random.seed(5), np.random.seed(5)
    _, other_state = make(tmp_path / "c", recipe, dropout=0.5)
    torch.rand(7)
    other_state.run(resume=False)
    _, killed = make(tmp_path / "b", recipe, dropout=0.5, stop_after=4)
    killed.run(resume=False)
    torch.rand(3)  # the resumed run restores the RNG of the checkpoint (iteration 3)
    _, resumed = make(tmp_path / "b", recipe, dropout=0.5)
    assert resumed.run(resume=True).resumed_from == 3
    losses = [[e["loss"] for e in read_log(tmp_path / d)] for d in "abc"]
    assert losses[0] == losses[1] == losses[2] and len(set(losses[0])) == 8


def test_sampler_factory_gets_the_stream_arguments(tmp_path):
    calls = []

    def factory(*args, **kwargs):
        calls.append((args, kwargs))
        return DeterministicSampler(*args, **kwargs)

    _, trainer = make(tmp_path, RECIPE.replace(iterations=4, checkpoint_interval=2), seed=5,
                      sampler_factory=factory, stop_after=2)
    trainer.run(resume=False)
    _, trainer = make(tmp_path, RECIPE.replace(iterations=4, checkpoint_interval=2), seed=5, sampler_factory=factory)
    trainer.run(resume=True)
    assert calls == [((6, 2, 4, 5, 0), {"rank": 0, "world_size": 1}), ((6, 2, 4, 5, 2), {"rank": 0, "world_size": 1})]


def test_padding_is_filled_with_the_methods_pad_color(tmp_path):
    method, trainer = make(tmp_path, RECIPE.replace(iterations=1), data=Data(valid_size=(5, 6)))
    trainer.run(resume=False)
    images = method.seen_images[0]
    mean = method.pad_color.reshape(3, 1)
    torch.testing.assert_close(images[:, :, 5:, :].reshape(2, 3, -1), mean.expand(2, 3, 3 * 8))
    torch.testing.assert_close(images[:, :, :5, 6:].reshape(2, 3, -1), mean.expand(2, 3, 5 * 2))
    assert not torch.allclose(images[:, :, :5, :6].reshape(2, 3, -1), mean.expand(2, 3, 30))


def test_compile_wraps_the_training_step(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)
    method, trainer = make(tmp_path, RECIPE.replace(iterations=1), compile=True)
    trainer.run(resume=False)
    assert compiled == [method.training_step]
    _, plain = make(tmp_path / "p", RECIPE.replace(iterations=1))
    plain.run(resume=False)
    assert len(compiled) == 1


def test_batch_not_divisible_by_the_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "info", lambda: distributed.DistInfo(0, 0, 3))
    _, trainer = make(tmp_path, RECIPE)
    with pytest.raises(ValueError, match=r"^batch size 2 is not divisible by 3 processes$"):
        trainer.run(resume=False)


# ---------------------------------------------------------------------------------------------- resume
def test_resume_details(tmp_path):
    """The log is cut after the checkpoint's iteration (blank lines dropped, lines without an iteration kept),
    the message names the checkpoint, a finished run returns at once, a mismatching model is refused."""
    lines = []
    _, trainer = make(tmp_path, RECIPE.replace(checkpoint_interval=3), stop_after=4)
    trainer.run(resume=False)
    with (tmp_path / "train_log.jsonl").open("a") as f:
        f.write("\n" + json.dumps({"note": "no iteration"}) + "\n")
    _, trainer = make(tmp_path, RECIPE.replace(checkpoint_interval=3), log=lines.append, stop_after=1)
    trainer.run(resume=True)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    assert lines[0] == f"resuming from {ckpt} at iteration 3"
    assert [e.get("iteration") for e in read_log(tmp_path)] == [1, 2, 3, None, 4]
    _, trainer = make(tmp_path, RECIPE.replace(checkpoint_interval=3, iterations=4))
    assert torch.load(ckpt, weights_only=False)["iteration"] == 3
    trainer.run(resume=True)
    _, finished = make(tmp_path, RECIPE.replace(checkpoint_interval=3, iterations=4))
    result = finished.run(resume=True)
    assert (result.iterations, result.resumed_from, result.seconds, result.final_losses, result.images_per_second,
            result.selection) == (4, 4, 0.0, {}, 0.0, None)
    state = torch.load(ckpt, weights_only=False)
    del state["model"]["scale"]
    torch.save(state, ckpt)
    _, broken = make(tmp_path, RECIPE)
    with pytest.raises(RuntimeError, match=r"^resume checkpoint .*last\.pt does not match the model: .*scale"):
        broken.run(resume=True)


def test_resume_takes_this_ranks_rng_state_when_the_world_size_matches(tmp_path):
    recipe = RECIPE.replace(checkpoint_interval=1, momentum=0.9)
    _, trainer = make(tmp_path, recipe, stop_after=1)
    trainer.run(resume=False)
    path = tmp_path / "checkpoints" / "last.pt"
    ckpt = torch.load(path, weights_only=False)
    torch.manual_seed(77)
    own = rng_state()
    expected = {1: own["torch"], 2: ckpt["rng"]["torch"], 0: ckpt["rng"]["torch"]}
    for ranks, want in expected.items():
        ckpt["rng_per_rank"] = [own] * ranks
        if not ranks:
            del ckpt["rng_per_rank"]
        torch.save(ckpt, path)
        _, trainer = make(tmp_path, recipe)
        optimizer = build_optimizer(trainer.method, recipe)
        torch.manual_seed(0)
        assert trainer._resume(optimizer) == 1
        assert torch.equal(torch.get_rng_state(), want), ranks
        assert optimizer.state_dict()["state"]  # the momentum of the checkpoint, not a fresh SGD
    ckpt["selection"] = {"interval": 1, "best_iteration": 1, "best_miou": 3.0, "checkpoint": "x", "history": [[1, 3.0]]}
    torch.save(ckpt, path)
    _, trainer = make(tmp_path, recipe)
    trainer._resume(build_optimizer(trainer.method, recipe))
    assert trainer.selection == ckpt["selection"]


# ---------------------------------------------------------------------------------------------- selection, stop
def test_selection_ties_keep_the_first_and_the_last_iteration_is_scored(tmp_path):
    scores = iter([50.0, 70.0, 70.0])
    asked = []
    _, trainer = make(tmp_path, RECIPE.replace(iterations=5, select_interval=2, checkpoint_interval=100),
                      validate=lambda it: asked.append(it) or next(scores))
    result = trainer.run(resume=False)
    assert asked == [2, 4, 5]
    assert result.selection == {"interval": 2, "best_iteration": 4, "best_miou": 70.0,
                                "checkpoint": "checkpoints/best.pt", "history": [[2, 50.0], [4, 70.0], [5, 70.0]]}
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert set(best) == {"iteration", "miou", "model", "spec_hash"}
    assert (best["iteration"], best["miou"], best["spec_hash"]) == (4, 70.0, "h")
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert last["selection"] == result.selection
    _, unused = make(tmp_path / "u", RECIPE.replace(iterations=1), validate=lambda it: 1 / 0)  # no interval
    assert unused.run(resume=False).selection is None


def test_stop_request_saves_and_raises(tmp_path):
    asked = iter([False, False, True])
    _, trainer = make(tmp_path, RECIPE.replace(checkpoint_interval=100), should_stop=lambda: next(asked))
    with pytest.raises(TrainingStopped) as info:
        trainer.run(resume=False)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    assert (info.value.iteration, info.value.checkpoint) == (3, ckpt)
    assert str(info.value) == f"stopped at iteration 3; checkpoint {ckpt}"
    assert torch.load(ckpt, weights_only=False)["iteration"] == 3


def test_stop_request_is_agreed_by_all_ranks(tmp_path, monkeypatch):
    reduced = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "all_reduce_mean", lambda t: reduced.append(t.clone()) or t * 0.5)
    answers = iter([True, False])
    _, trainer = make(tmp_path, RECIPE, should_stop=lambda: next(answers))
    assert trainer._stop_requested() is True  # this rank asks: the mean over 2 ranks (0.5) is > 0
    assert trainer._stop_requested() is False
    assert [t.tolist() for t in reduced] == [[1.0], [0.0]]
    _, never = make(tmp_path, RECIPE)
    assert never._stop_requested() is False


# ---------------------------------------------------------------------------------------------- output, seeds
def test_progress_line_written_out():
    entry = {"iteration": 6, "loss": 1.23456, "loss_ce": 0.5, "aux": 3.0, "lr": 0.000123456, "time": 9.0}
    assert progress_line(entry, 10, 2, 2.0) == (
        "iter 6/10  loss 1.2346 loss_ce 0.5000  lr 0.000123  2.00 it/s  ETA 00:00:02")
    slow = dict(entry, iteration=3)
    assert progress_line(slow, 7448, 2, 1.0) == (
        "iter 3/7448  loss 1.2346 loss_ce 0.5000  lr 0.000123  1.00 it/s  ETA 02:04:05")
    assert progress_line(entry, 10, 2, 0.0).endswith("lr 0.000123  0.00 it/s  ETA ?")
    assert progress_line(dict(entry, iteration=2), 10, 2, 3.0).endswith("0.00 it/s  ETA ?")


def test_progress_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    lines = []
    _, trainer = make(tmp_path, RECIPE.replace(iterations=4, checkpoint_interval=2), log=lines.append, stop_after=2)
    trainer.progress = True
    trainer.run(resume=False)
    first = capsys.readouterr().err
    assert "train two_loss" in first and "2/4" in first and "it/s" in first and "loss=" in first
    _, trainer = make(tmp_path, RECIPE.replace(iterations=4, checkpoint_interval=2), log=lines.append)
    trainer.progress = True
    trainer.run(resume=True)
    assert "4/4" in capsys.readouterr().err  # started at 2 of 4
    assert lines == [f"resuming from {tmp_path / 'checkpoints' / 'last.pt'} at iteration 2"]  # no plain lines
    _, quiet = make(tmp_path / "q", RECIPE.replace(iterations=1), log=lines.append)  # progress=False
    quiet.run(resume=False)
    assert "train two_loss" not in capsys.readouterr().err and lines[-1].startswith("iter 1/1")


def test_seed_everything_and_rng_state_round_trip():
    seed = 2**32 + 100  # numpy takes it modulo 2**32
    seed_everything(seed)
    got = (random.random(), np.random.random(), torch.rand(1).item())
    assert got == (random.Random(seed).random(), np.random.RandomState(100).random_sample(),
                   torch.rand(1, generator=torch.Generator().manual_seed(seed)).item())
    state = rng_state()
    assert set(state) == {"torch", "python", "numpy"}  # no "cuda" without CUDA
    first = (random.random(), np.random.random(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == first


def test_cuda_rng_state_only_with_cuda(monkeypatch):
    set_calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_calls.append)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["gpu0"])
    state = rng_state()
    set_rng_state(dict(state, cuda=["saved"]))  # no CUDA here: the saved GPU state is not applied
    assert set_calls == [] and "cuda" not in state
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert rng_state()["cuda"] == ["gpu0"]
    set_rng_state(state)  # a checkpoint written without CUDA: nothing to apply
    set_rng_state(dict(state, cuda=["saved"]))
    assert set_calls == [["saved"]]


def test_resume_of_a_fresh_folder_starts_at_zero_and_loads_to_cpu(tmp_path, monkeypatch):
    _, trainer = make(tmp_path / "a", RECIPE.replace(iterations=2))
    result = trainer.run(resume=True)  # nothing to resume: a fresh, seeded run
    assert result.resumed_from is None and [e["iteration"] for e in read_log(tmp_path / "a")] == [1, 2]
    _, fresh = make(tmp_path / "b", RECIPE.replace(iterations=2))
    fresh.run(resume=False)
    assert [e["loss"] for e in read_log(tmp_path / "a")] == [e["loss"] for e in read_log(tmp_path / "b")]
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, **kw: loads.append(kw) or real_load(path, **kw))
    _, again = make(tmp_path / "a", RECIPE.replace(iterations=3))
    again.run(resume=True)
    assert loads[0] == {"map_location": "cpu", "weights_only": False}  # a GPU checkpoint resumes anywhere


def test_another_specs_checkpoint_message_in_full(tmp_path):
    make(tmp_path, RECIPE.replace(iterations=1))[1].run(resume=False)
    _, other = make(tmp_path, RECIPE)
    other.spec_hash = "other"
    ckpt = tmp_path / "checkpoints" / "last.pt"
    with pytest.raises(RuntimeError) as err:
        other.run(resume=True)
    assert str(err.value) == (f"{ckpt} belongs to a different run spec (h != other); use another --out or delete "
                              "the folder to start over")


def test_ddp_checkpoint_keeps_every_ranks_rng_and_only_rank_0_writes(tmp_path, monkeypatch):
    torch.manual_seed(5)
    other = rng_state()
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [obj, other])  # 2 ranks
    _, trainer = make(tmp_path, RECIPE)
    optimizer = build_optimizer(trainer.method, RECIPE)
    torch.manual_seed(3)
    trainer._save(optimizer, 7)
    ckpt = torch.load(trainer.ckpt_path, weights_only=False)
    assert ckpt["iteration"] == 7 and len(ckpt["rng_per_rank"]) == 2
    assert torch.equal(ckpt["rng"]["torch"], torch.Generator().manual_seed(3).get_state())
    assert torch.equal(ckpt["rng_per_rank"][1]["torch"], other["torch"])
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    trainer.ckpt_path.unlink()
    trainer._save(optimizer, 8)
    assert not trainer.ckpt_path.exists()


def test_stop_flag_is_reduced_on_the_trainers_device(tmp_path, monkeypatch):
    """NCCL reduces device tensors: the flag is made on the trainer's device (``meta`` here, no data)."""
    devices = []
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "all_reduce_mean", lambda t: devices.append(t.device.type) or torch.ones(1))
    method = TwoLoss(TwoLoss.default_config())
    trainer = Trainer(method, RECIPE, Data(), out_dir=tmp_path, seed=0, device=torch.device("meta"), spec_hash="h",
                      progress=False, should_stop=lambda: True)
    assert trainer._stop_requested() is True and devices == ["meta"]


def test_the_model_is_moved_to_the_device(tmp_path, monkeypatch):
    import runners.train as train_mod

    moved = []
    real = train_mod.batch_to_device
    monkeypatch.setattr(train_mod, "batch_to_device", lambda batch, device, **kw: moved.append(device) or
                        real(batch, device, **kw))
    method = TwoLoss(TwoLoss.default_config())
    trainer = Trainer(method, RECIPE, Data(), out_dir=tmp_path, seed=0, device=torch.device("meta"), spec_hash="h",
                      progress=False, log=lambda *_: None)
    with pytest.raises(Exception):  # meta tensors hold no values to log
        trainer.run(resume=False)
    assert {p.device.type for p in method.parameters()} == {"meta"}
    assert moved == [torch.device("meta")]  # and so is the batch


def test_a_finished_run_returns_its_selection(tmp_path):
    scores = iter([1.0, 2.0])
    recipe = RECIPE.replace(iterations=2, select_interval=1)
    _, trainer = make(tmp_path, recipe, validate=lambda it: next(scores))
    first = trainer.run(resume=False).selection
    _, again = make(tmp_path, recipe, validate=lambda it: 1 / 0)
    result = again.run(resume=True)
    assert result.resumed_from == 2 and result.selection == first and first["best_iteration"] == 2


def test_ddp_wraps_the_training_step(tmp_path, monkeypatch):
    """With 2 processes (simulated): the step is DDP's wrapper of (method, device); each rank takes half the
    batch."""
    wrapped, batches = [], []
    monkeypatch.setattr(distributed, "info", lambda: distributed.DistInfo(0, 0, 2))
    monkeypatch.setattr(distributed, "all_reduce_mean", lambda t: t)
    monkeypatch.setattr(distributed, "all_gather_object", lambda obj: [obj, obj])

    def ddp_step(method, device):
        wrapped.append((method, device))
        return lambda images, labels: batches.append(images.shape[0]) or method.training_step(images, labels)

    monkeypatch.setattr(distributed, "ddp_training_step", ddp_step)
    method, trainer = make(tmp_path, RECIPE.replace(iterations=2))
    trainer.run(resume=False)
    assert wrapped == [(method, torch.device("cpu"))] and batches == [1, 1]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_training_loader_settings(tmp_path, monkeypatch, device):
    """Batches of the per-rank size from the sampler, pinned only for CUDA, no persistent workers, full batches,
    and its own generator (seeded with the run's seed)."""
    import runners.train as train_mod

    class Stop(Exception):
        pass

    settings = []

    def loader(dataset, **kwargs):
        settings.append(kwargs)
        raise Stop

    monkeypatch.setattr(train_mod, "DataLoader", loader)
    method, trainer = make(tmp_path, RECIPE, num_workers=2, seed=4)
    trainer.device = torch.device(device)
    monkeypatch.setattr(method, "to", lambda d: method)  # no CUDA here: only the loader's settings are looked at
    with pytest.raises(Stop):
        trainer.run(resume=False)
    kwargs = settings[0]
    assert isinstance(kwargs.pop("sampler"), DeterministicSampler)
    generator = kwargs.pop("generator")
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(4).get_state())
    assert kwargs == {"batch_size": 2, "collate_fn": train_mod.collate, "num_workers": 2,
                      "pin_memory": device == "cuda", "persistent_workers": False, "drop_last": True}


def test_trainer_defaults(tmp_path):
    trainer = Trainer(TwoLoss(TwoLoss.default_config()), RECIPE, Data(), out_dir=tmp_path, seed=0,
                      device=torch.device("cpu"), spec_hash="h")
    assert (trainer.num_workers, trainer.progress, trainer.stop_after, trainer.compile, trainer.on_log,
            trainer.should_stop, trainer.validate, trainer.log) == (0, True, None, False, None, None, None, print)


def test_stop_after_counts_from_the_resumed_iteration(tmp_path):
    recipe = RECIPE.replace(checkpoint_interval=4)
    make(tmp_path, recipe, stop_after=4)[1].run(resume=False)
    result = make(tmp_path, recipe, stop_after=2)[1].run(resume=True)
    assert (result.resumed_from, result.iterations) == (4, 6)
    assert result.images_per_second == pytest.approx((6 - 4) * 2 / result.seconds, rel=1e-12)


def test_a_sampler_that_yields_nothing_ends_without_losses(tmp_path):
    _, trainer = make(tmp_path, RECIPE, sampler_factory=lambda *args, **kwargs: [])
    result = trainer.run(resume=False)
    assert result.final_losses == {} and result.iterations == 0


def test_progress_bar_settings(tmp_path, monkeypatch):
    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, **kwargs):
            self.kwargs, self.n, self.postfix, self.closed = kwargs, 0, [], 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def set_postfix(self, **kwargs):
            self.postfix.append(kwargs)

        def close(self):
            self.closed += 1

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    recipe = RECIPE.replace(iterations=4, checkpoint_interval=2, log_interval=2)
    for stop_after, resume in ((2, False), (None, True)):
        _, trainer = make(tmp_path, recipe, stop_after=stop_after)
        trainer.progress = True
        trainer.run(resume=resume)
    assert [b.kwargs for b in bars] == [
        {"total": 4, "initial": start, "desc": "train two_loss", "unit": "it", "dynamic_ncols": True}
        for start in (0, 2)]
    assert [b.n for b in bars] == [2, 2] and [b.closed for b in bars] == [1, 1]
    log = read_log(tmp_path)
    assert [p["loss"] for b in bars for p in b.postfix] == [f"{e['loss']:.3f}" for e in log]
