import pytest
import torch

from benchmarks.numerics import PRECISIONS, configure_numerics, resolve_numerics


@pytest.mark.parametrize("precision, dtype, tf32", [("bf16", torch.bfloat16, True), ("tf32", None, True),
                                                     ("fp32", None, False)])
def test_cuda_meaning_of_each_precision(precision, dtype, tf32):
    numerics = resolve_numerics(precision, "cuda")
    assert (numerics.autocast_dtype, numerics.tf32, numerics.cudnn_benchmark) == (dtype, tf32, tf32)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_cpu_is_always_strict_fp32(precision):
    numerics = configure_numerics(precision, "cpu")
    assert numerics.autocast_dtype is None and not numerics.tf32
    with numerics.autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert numerics.as_record()["precision"] == precision


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="bf16, tf32, fp32"):
        resolve_numerics("fp16", "cpu")
