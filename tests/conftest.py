import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# under pytest-xdist each worker gets one thread (OpenMP spin-waits make oversubscription very slow)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "fixtures")


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
        assert all(0 <= t["miou"] <= 100 for t in record["results"]["targets"].values())
        assert "reference" in record["results"]
        return record

    return run_cell
