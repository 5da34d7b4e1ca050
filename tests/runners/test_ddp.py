"""DDP inside one run (runners.distributed + the Trainer): 2 CPU processes with gloo train exactly like one
process on the same global batch, and a multi-task submitit job joins one process group."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from methods.base import Method, MethodConfig, TrainRecipe
from runners import distributed
from runners.train import Trainer


class ToyMethod(Method):
    """A 1x1-conv segmenter: per-image-mean losses, so the global-batch mean is the mean of rank means."""

    name = "toy"

    def __init__(self, config: MethodConfig):
        super().__init__(config)
        self.head = nn.Conv2d(3, config.num_classes, 1)
        self.aux = nn.Conv2d(3, config.num_classes, 1)  # unused by training_step: DDP must cope

    @classmethod
    def default_config(cls, backbone=None, *, scale="paper"):
        return MethodConfig(backbone="toy", scale=scale)

    @classmethod
    def recipe(cls, *, source="gta5", scale="paper", backbone=None):
        return TrainRecipe(iterations=5, batch_size=4, lr=0.05, schedule="poly", checkpoint_interval=2,
                           log_interval=1, grad_clip=1.0)

    def training_step(self, images, labels):
        logits = self.head(self.normalize(images))
        return {"loss_ce": F.cross_entropy(logits, labels), "loss_reg": 1e-3 * logits.pow(2).mean()}

    def predict(self, images):
        return self.head(self.normalize(images))


class ToyData:
    """12 random 16x16 images without ignore pixels; items keyed by (index, aug_seed) like the real datasets."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(12, 3, 16, 16, generator=g) * 255
        self.labels = torch.randint(0, 19, (12, 16, 16), generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        return {"image": self.images[index], "label": self.labels[index], "name": str(index)}


def _train(out_dir, stop_after=None, resume=False):
    torch.manual_seed(0)
    method = ToyMethod(ToyMethod.default_config())
    trainer = Trainer(method, ToyMethod.recipe(), ToyData(), out_dir=out_dir, seed=3, device=torch.device("cpu"),
                      spec_hash="toy", progress=False, log=lambda *_: None, stop_after=stop_after)
    return trainer.run(resume=resume)


def _ddp_worker(rank, world_size, port, straight_dir, resumed_dir):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = distributed.init_from_environment(backend="gloo")
    assert (info.rank, info.world_size) == (rank, world_size)
    try:
        _train(straight_dir)
        _train(resumed_dir, stop_after=3)  # as if killed after iteration 3 ...
        _train(resumed_dir, resume=True)  # ... and requeued
        distributed.barrier()  # both ranks done before either tears down gloo
    finally:
        distributed.cleanup()
    # a finished worker skips the interpreter's teardown, where gloo's threads can still abort the process
    # ("terminate called without an active exception"); errors above still propagate to mp.start_processes
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log(out_dir):
    return [json.loads(line) for line in (out_dir / "train_log.jsonl").read_text().splitlines()]


def _final_weights(out_dir):
    return torch.load(out_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


def test_two_gloo_processes_train_like_one(tmp_path):
    """Same losses (logged as the global-batch mean) and weights as one process; a killed DDP run resumes."""
    single = tmp_path / "single"
    _train(single)
    runs = {"straight": tmp_path / "ddp", "killed and resumed": tmp_path / "ddp_resumed"}
    mp.start_processes(_ddp_worker, args=(2, _free_port(), *runs.values()), nprocs=2, join=True,
                       start_method="spawn")
    log_1, w1 = _log(single), _final_weights(single)
    for what, ddp in runs.items():
        log_2 = _log(ddp)
        assert [e["iteration"] for e in log_1] == [e["iteration"] for e in log_2] == [1, 2, 3, 4, 5], what
        for e in log_2:  # the rate applied at step iteration-1, written out: 0.05 * (1 - step / 5) ** 0.9
            assert e["lr"] == pytest.approx(0.05 * (1 - (e["iteration"] - 1) / 5) ** 0.9, rel=1e-12), (what, e)
        for a, b in zip(log_1, log_2):
            for k in ("loss", "loss_ce", "loss_reg", "lr"):
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (what, a["iteration"], k)
        w2 = _final_weights(ddp)
        assert w1.keys() == w2.keys()
        for k in w1:
            torch.testing.assert_close(w1[k], w2[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{what}: {k}: {m}")
        ckpt = torch.load(ddp / "checkpoints" / "last.pt", weights_only=False)
        assert len(ckpt["rng_per_rank"]) == 2 and ckpt["iteration"] == 5


def test_batch_must_split_over_ranks(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "info", lambda: distributed.DistInfo(0, 0, 3))
    with pytest.raises(ValueError, match="not divisible by 3"):
        _train(tmp_path)


def test_single_process_is_a_no_op(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.init_from_environment() == distributed.DistInfo(0, 0, 1)
    assert distributed.is_main() and distributed.world_size() == 1
    t = torch.tensor([2.0])
    assert distributed.all_reduce_mean(t) is t and distributed.all_gather_object(5) == [5]


def test_submitit_tasks_join_one_process_group(tmp_path):
    """What `runners.sweep --procs-per-task 2` launches: two submitit tasks, one gloo group."""
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="local")
    executor.update_parameters(tasks_per_node=2, timeout_min=3, local_setup=[
        f"export PYTHONPATH={os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))}"])
    job = executor.submit(distributed.probe)
    results = job.results()
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["world_size"] == 2 and r["rank_sum"] == 1 and r["backend"] == "gloo" for r in results)
