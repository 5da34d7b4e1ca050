import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# under pytest-xdist or mutmut's parallel workers each process gets one thread (OpenMP spin-waits make
# oversubscription very slow)
_parallel = os.environ.get("PYTEST_XDIST_WORKER") or "mutmut" in sys.modules
torch.set_num_threads(1 if _parallel else max(1, min(2, os.cpu_count() or 1)))

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")


def _brief_failures_of_mutants() -> None:
    """A failing test under a mutant (``MUTANT_UNDER_TEST``, set by mutmut or by hand) is reported as its
    exception's one line. pytest's full report parses the failing frame's source file with ``ast``, and
    mutmut's copy of a module holds every mutant (``mutants/runners/sweep.py``: 4.7 MB, ~10 s a parse on the
    shared machine): that parse, not the tests, was most of a killed mutant's time."""
    from _pytest.nodes import Node

    full = Node._repr_failure_py

    def repr_failure(self, excinfo, style=None):
        if os.environ.get("MUTANT_UNDER_TEST", "") in ("", "stats", "fail"):  # clean run, stats: the full report
            return full(self, excinfo, style)
        return f"{excinfo.typename}: {excinfo.value} (under mutant {os.environ['MUTANT_UNDER_TEST']})"

    Node._repr_failure_py = repr_failure


_brief_failures_of_mutants()


def pytest_collection_modifyitems(config, items):
    """``DGSS_MUTATION_TESTS="tests/runners/test_sweep.py tests/runners/test_sweep_resubmit.py"`` keeps only
    those test files (or folders): the per-module selection of a mutation run (README, "Contributing"), so that
    mutmut's stats map each mutant to the module's own tests, not to every end-to-end test that reaches it."""
    wanted = os.environ.get("DGSS_MUTATION_TESTS", "").split()
    if wanted:
        prefixes = tuple(w.rstrip("/") for w in wanted)
        keep, dropped = [], []
        for item in items:
            (keep if item.nodeid.split("::")[0].startswith(prefixes) else dropped).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = keep
    items.sort(key=_slow_minutes, reverse=True)  # stable: every other test keeps its place


def pytest_configure(config):
    """Under ``pytest -n N`` (pytest-xdist's ``load`` scheduling) hand out one test at a time unless
    ``--maxschedchunk`` says otherwise: xdist's default first gives each worker a quarter of its share as one run
    of consecutive tests, and the slow tests, which sort first (:func:`_slow_minutes`), all landed on one worker
    (CI of c6d6005: the seven learning tests in a row on one core, 2,194 s in all)."""
    if getattr(config.option, "dist", "no") == "load" and getattr(config.option, "maxschedchunk", 0) is None:
        config.option.maxschedchunk = 1


def _slow_minutes(item) -> float:
    """The CPU minutes a ``slow`` test declares (``pytest.mark.slow(minutes=M)``; 1 if it declares none; 0 for
    the rest). Longest first, one at a time (:func:`pytest_configure`): the long end-to-end runs start at once on
    every worker, and the short tests fill in around them."""
    marker = item.get_closest_marker("slow")
    return 0.0 if marker is None else float(marker.kwargs.get("minutes", 1.0))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): with tiny
    tensors on the shared 2-core machine, two OpenMP threads made each step ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fixtures_dir():
    """../shared/fixtures (real dataset files in their official layouts)."""
    path = os.path.abspath(os.environ.get("DGSS_FIXTURES", FIXTURES))
    if not os.path.isdir(path):
        pytest.skip(f"shared fixtures not found at {path}")
    return path


class _FirstN:
    """The first ``n`` items of an evaluation split (keeps end-to-end smoke runs short)."""

    def __init__(self, dataset, n):
        self.dataset, self.n = dataset, min(n, len(dataset))
        names = getattr(dataset, "names", None)
        if names is not None:
            self.names = list(names)[: self.n]

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        return self.dataset[index]


@pytest.fixture
def run_tiny_cell(tmp_path, monkeypatch):
    """``run_tiny_cell(method, protocol)``: ``runners.run.main`` end to end on the miniature benchmark with 2
    iterations and 1 image per evaluation split; asserts the basics and returns the result record."""
    import json

    import runners.run as run
    from runners.records import RECORD_FILE

    real = run.split_dataset

    def few(resolved, split_spec, transform):
        ds = real(resolved, split_spec, transform)
        return ds if split_spec is resolved.protocol.source else _FirstN(ds, 1)

    monkeypatch.setattr(run, "split_dataset", few)

    def run_cell(method: str, protocol: str = "gta2cbm") -> dict:
        out = tmp_path / f"run-{method}-{protocol}"
        assert run.main(["--method", method, "--protocol", protocol, "--iters", "2", "--batch-size", "2",
                         "--no-progress", "--out", str(out)]) == 0
        record = json.loads((out / RECORD_FILE).read_text())
        assert record["method"] == method and record["miniature"] and record["train"]["iterations"] == 2
        for t in record["results"]["targets"].values():  # the score, recomputed from the stored matrices
            cm = np.load(out / t["confusion"])["confusion"].sum(0).astype(np.float64)
            tp, union = np.diag(cm), cm.sum(0) + cm.sum(1) - np.diag(cm)
            assert t["miou"] == pytest.approx(100 * np.mean(tp[union > 0] / union[union > 0]), rel=1e-9)
        assert "reference" in record["results"]
        return record

    return run_cell


@pytest.fixture
def toy_scene():
    """Two-class toy scenes (batch 2, 64 px): sky (10) above road (0) at a random horizon, coloured to match."""
    g = torch.Generator().manual_seed(0)
    batch, size = 2, 64
    images = torch.empty(batch, 3, size, size)
    labels = torch.empty(batch, size, size, dtype=torch.long)
    for b in range(batch):
        horizon = int(torch.randint(size // 4, 3 * size // 4, (1,), generator=g))
        labels[b, :horizon], labels[b, horizon:] = 10, 0
        images[b, :, :horizon] = torch.tensor([70.0, 130.0, 220.0])[:, None, None]
        images[b, :, horizon:] = torch.tensor([90.0, 90.0, 90.0])[:, None, None]
    images += torch.rand(images.shape, generator=g) * 20
    return images, labels


@pytest.fixture
def region_batch():
    """A fixed random-image batch (2 x 32 px) with three label regions (classes 0, 1, 13)."""
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[:, :16] = 1
    labels[:, 20:, 20:] = 13
    return images, labels


@pytest.fixture
def overfit():
    """``overfit(method, optimizer, images, labels, steps)``: train on one fixed batch; returns per-step losses
    (each loss by name, plus ``total``)."""

    def run(method, optimizer, images, labels, steps):
        method.train()
        history = []
        for _ in range(steps):
            losses = method.training_step(images, labels)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append({k: float(v.detach()) for k, v in losses.items()} | {"total": float(total.detach())})
        return history

    return run
