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
