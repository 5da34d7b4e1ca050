"""DeepLabv3+ decoder (FAMix / DeepLabV3Plus-Pytorch layout): key names and shapes, ASPP rates, forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from methods.heads.deeplabv3plus import DeepLabV3PlusConfig, DeepLabV3PlusHead


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster than two on the shared, busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _expected_shapes(cin=2048, clow=256, aspp=256, proj=48, dec=256, ncls=19) -> dict[str, tuple[int, ...]]:
    """The parameter layout of the lineage's ``DeepLabHeadV3Plus`` (written out from its module structure)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, cout, cin_, k, bias=False):
        shapes[f"{name}.weight"] = (cout, cin_, k, k)
        if bias:
            shapes[f"{name}.bias"] = (cout,)

    def bn(name, c):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)

    conv("project.0", proj, clow, 1), bn("project.1", proj)
    conv("aspp.convs.0.0", aspp, cin, 1), bn("aspp.convs.0.1", aspp)
    for i in (1, 2, 3):
        conv(f"aspp.convs.{i}.0", aspp, cin, 3), bn(f"aspp.convs.{i}.1", aspp)
    conv("aspp.convs.4.1", aspp, cin, 1), bn("aspp.convs.4.2", aspp)  # index 0: the global average pool
    conv("aspp.project.0", aspp, 5 * aspp, 1), bn("aspp.project.1", aspp)
    conv("classifier.0", dec, proj + aspp, 3), bn("classifier.1", dec)
    conv("classifier.3", ncls, dec, 1, bias=True)
    return shapes


def test_real_scale_layout_on_meta():
    with torch.device("meta"):
        head = DeepLabV3PlusHead(DeepLabV3PlusConfig())
    params = {k: tuple(v.shape) for k, v in head.named_parameters()}
    assert params == _expected_shapes()
    assert sum(p.numel() for p in head.parameters()) == 16_253_299
    buffers = {k for k, _ in head.named_buffers()}
    assert "aspp.convs.4.2.running_var" in buffers and "classifier.1.num_batches_tracked" in buffers
    rates = [head.aspp.convs[i][0].dilation[0] for i in (1, 2, 3)]
    assert rates == [6, 12, 18] and [head.aspp.convs[i][0].padding[0] for i in (1, 2, 3)] == [6, 12, 18]
    assert isinstance(head.aspp.project[3], torch.nn.Dropout) and head.aspp.project[3].p == 0.1


def test_forward_shapes_pooling_branch_and_init():
    torch.manual_seed(0)
    cfg = DeepLabV3PlusConfig(in_channels=64, low_level_channels=16, num_classes=5, aspp_channels=24,
                              low_level_proj=8, decoder_channels=12, aspp_rates=(1, 2, 3))
    head = DeepLabV3PlusHead(cfg)
    assert {k: tuple(v.shape) for k, v in head.named_parameters()} == _expected_shapes(64, 16, 24, 8, 12, 5)
    assert all(bool((m.weight == 1).all()) and bool((m.bias == 0).all())
               for m in head.modules() if isinstance(m, torch.nn.BatchNorm2d))
    high, low = torch.randn(2, 64, 5, 7), torch.randn(2, 16, 20, 28)
    out = head(high, low)
    assert out.shape == (2, 5, 20, 28)
    head.eval()
    with torch.no_grad():
        pooled = head.aspp.convs[4](high)
        assert pooled.shape == (2, 24, 5, 7) and torch.allclose(pooled, pooled[..., :1, :1].expand_as(pooled))
        a, b = head(high, low), head(high, low)
        torch.testing.assert_close(a, b)  # dropout off in eval mode
        # the decoder: ASPP upsampled (align_corners=False) to the low-level size, concat [low, aspp]
        up = F.interpolate(head.aspp(high), size=(20, 28), mode="bilinear", align_corners=False)
        ref = head.classifier(torch.cat([head.project(low), up], dim=1))
        torch.testing.assert_close(a, ref)
    out.sum().backward()
    assert all(p.grad is not None for p in head.parameters())
