"""Numbers shared by the parity generator (run against an official checkout) and the parity tests.

Nothing here comes from an official repository. Weights are generated per official key name from a seed
(:func:`official_weights`), so a fixture stores key names and shapes, never tensors; inputs likewise
(:func:`seeded`). Outputs are stored as :func:`summarize` records (shape, float64 sum / sum of squares /
max |x|, and the values at 32 fixed flat positions) and compared with :func:`parity_error`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

FIXTURES = Path(__file__).parent / "fixtures"
NUM_POSITIONS = 32


def _name_seed(name: str, seed: int) -> int:
    return (int(hashlib.sha256(name.encode()).hexdigest()[:12], 16) + seed) % (2**63)


def official_tensor(name: str, shape: tuple[int, ...], seed: int) -> Tensor:
    """A float32 tensor for the official parameter ``name``: scalars 0.5 + 0.25 N, learnable token tables N,
    BatchNorm running variances 0.5 + |N|, 1-d weights (norm scales) 1 + 0.1 N, other 1-d tensors 0.1 N,
    matrices N / sqrt(fan_in); ``num_batches_tracked`` 0."""
    g = torch.Generator().manual_seed(_name_seed(name, seed))
    x = torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    if name.endswith("num_batches_tracked"):
        return torch.zeros((), dtype=torch.long)
    if name.endswith("running_var"):
        x = 0.5 + x.abs()
    elif len(shape) == 0:
        x = 0.5 + 0.25 * x
    elif "learnable_tokens" in name:
        pass
    elif len(shape) == 1:
        x = 1 + 0.1 * x if name.endswith("weight") else 0.1 * x
    else:
        x = x / math.sqrt(math.prod(shape[1:]))
    return x.float()


def official_weights(shapes: Mapping[str, list[int] | tuple[int, ...]], seed: int) -> dict[str, Tensor]:
    """An official-format state dict (key -> tensor) for ``shapes`` (key -> shape)."""
    return {k: official_tensor(k, tuple(s), seed) for k, s in shapes.items()}


def seeded(name: str, shape: tuple[int, ...], seed: int, scale: float = 1.0) -> Tensor:
    """An input tensor N(0, scale^2) determined by (name, shape, seed)."""
    g = torch.Generator().manual_seed(_name_seed("input:" + name, seed))
    return (scale * torch.randn(tuple(shape), generator=g, dtype=torch.float64)).float()


def seeded_labels(shape: tuple[int, ...], num_classes: int, seed: int, ignore_rows: int = 0,
                  classes: list[int] | None = None) -> Tensor:
    """Train-id labels [B, ..., H, W] uniform over ``num_classes`` ids (``classes[i]`` for id i when given),
    the first ``ignore_rows`` rows 255."""
    labels = torch.randint(0, num_classes, tuple(shape), generator=torch.Generator().manual_seed(seed))
    if classes is not None:
        labels = torch.tensor(classes)[labels]
    labels[..., :ignore_rows, :] = 255
    return labels


def fixed_points(name: str, rows: int, num_points: int, seed: int) -> Tensor:
    """Point coordinates [rows, num_points, 2] in [0, 1) that replace the random point samples of the
    Mask2Former matcher and losses on both sides (the same rows for every prediction set)."""
    g = torch.Generator().manual_seed(_name_seed("points:" + name, seed))
    return torch.rand((rows, num_points, 2), generator=g, dtype=torch.float64).float()


def summarize(x: Tensor) -> dict[str, Any]:
    """Checksums and the values at fixed flat positions (the first and last element included)."""
    x = x.detach().double().cpu()
    flat = x.flatten()
    g = torch.Generator().manual_seed(flat.numel())
    pos = torch.randint(0, flat.numel(), (NUM_POSITIONS - 2,), generator=g).tolist() + [0, flat.numel() - 1]
    return {"shape": list(x.shape), "sum": flat.sum().item(), "sum_sq": (flat * flat).sum().item(),
            "max_abs": flat.abs().max().item(), "positions": pos, "values": flat[pos].tolist()}


def parity_error(got: Tensor, expected: Mapping[str, Any]) -> float:
    """Max relative error of ``got`` against a :func:`summarize` record: |got - expected| at the fixed
    positions divided by the expected tensor's max |x|, and the relative error of the sum of squares."""
    got = got.detach().double().cpu()
    if list(got.shape) != list(expected["shape"]):
        raise AssertionError(f"shape {list(got.shape)} != official {expected['shape']}")
    scale = max(expected["max_abs"], 1e-12)
    vals = got.flatten()[expected["positions"]]
    pointwise = (vals - torch.tensor(expected["values"], dtype=torch.float64)).abs().max().item() / scale
    energy = abs((got * got).sum().item() - expected["sum_sq"]) / max(expected["sum_sq"], 1e-12)
    return max(pointwise, energy)


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def write_fixture(path: Path, record: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
