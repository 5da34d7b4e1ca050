"""CLIP ResNet image tower: layer-by-layer agreement with open_clip's ModifiedResNet, official-file loading
(TorchScript archive, fp16, key report), output stride / dilation, real-scale key layout on the meta device."""

from __future__ import annotations

import warnings

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.modified_resnet import ModifiedResNet

from methods.backbones.resnet import (
    AttentionPool2d,
    CLIPResNet,
    clip_resnet_config,
    load_clip_resnet,
    split_clip_visual_state,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster than two on the shared, busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

TINY_TEXT = dict(width=64, heads=2, layers=2)


def _tiny_open_clip(layers=(1, 1, 1, 1), width=8, image_size=32, embed_dim=32, seed=0) -> CLIP:
    """A tiny open_clip CLIP with a ModifiedResNet image tower (the real key layout), random BN statistics."""
    torch.manual_seed(seed)
    model = CLIP(embed_dim, CLIPVisionCfg(layers=layers, width=width, image_size=image_size),
                 CLIPTextCfg(**TINY_TEXT), quick_gelu=True).eval()
    with torch.no_grad():
        for m in model.visual.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, so BN handling is checked too
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def oc() -> CLIP:
    return _tiny_open_clip()


def _tiny_cfg(**changes):
    return clip_resnet_config("tiny", layers=(1, 1, 1, 1), **changes)


def test_matches_open_clip_layer_by_layer(oc):
    tower = CLIPResNet(_tiny_cfg(output_stride=32)).eval()
    report = tower.load_official(oc.state_dict())
    assert report.ok() and report.missing == [] and report.unexpected == []
    assert report.ignored and all(not k.startswith("visual.") for k in report.ignored)  # text tower, logit_scale
    x = torch.randn(2, 3, 64, 64)
    v = oc.visual
    with torch.no_grad():
        ours = tower(x, clip_geometry=True)
        ref = v.stem(x)
        torch.testing.assert_close(ours["stem"], ref)
        for i, layer in enumerate((v.layer1, v.layer2, v.layer3, v.layer4), start=1):
            ref = layer(ref)
            torch.testing.assert_close(ours[f"layer{i}"], ref, msg=f"layer{i}")
        x32 = torch.randn(3, 3, 32, 32)  # CLIP-sized input: attention pool over its pretraining grid
        torch.testing.assert_close(tower.encode_image(x32), oc.encode_image(x32), rtol=1e-4, atol=1e-5)


def test_output_stride_16_shares_layers_1_to_3(oc):
    os16 = CLIPResNet(_tiny_cfg(output_stride=16), attnpool=False).eval()
    os16.load_official(oc.state_dict())
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        seg = os16(x)
        clip = os16(x, clip_geometry=True)
    assert seg["layer1"].shape[-2:] == (24, 16) and seg["layer4"].shape[-2:] == (6, 4)  # stride 16
    assert clip["layer4"].shape[-2:] == (3, 2)  # CLIP's own stride 32
    for name in ("stem", "layer1", "layer2", "layer3"):
        torch.testing.assert_close(seg[name], clip[name])


def test_dilation_patterns_and_output_stride_8():
    famix = CLIPResNet(clip_resnet_config("RN50"), attnpool=False)
    assert [b.dilation for b in famix.layer4] == [1, 1, 2]  # FAMix's _make_layer: only the last block dilates
    assert [b.seg_stride for b in famix.layer4] == [1, 1, 1] and famix.layer4[0].stride == 2
    assert all(b.dilation == 1 for layer in (famix.layer1, famix.layer2, famix.layer3) for b in layer)
    tv = CLIPResNet(clip_resnet_config("RN50", dilation_pattern="torchvision"), attnpool=False)
    assert [b.dilation for b in tv.layer4] == [1, 2, 2]
    os8 = CLIPResNet(clip_resnet_config("RN50", output_stride=8), attnpool=False)
    assert [b.dilation for b in os8.layer3] == [1] * 5 + [2] and [b.dilation for b in os8.layer4] == [1, 2, 4]
    tiny8 = CLIPResNet(_tiny_cfg(output_stride=8), attnpool=False).eval()
    with torch.no_grad():
        out = tiny8(torch.randn(1, 3, 64, 64))
    assert out["layer3"].shape[-1] == 8 and out["layer4"].shape[-1] == 8
    with pytest.raises(ValueError, match="output_stride"):
        clip_resnet_config("RN50", output_stride=4)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_fp16_archive_with_separate_attention_pool(tmp_path, oc):
    """OpenAI's RN50.pt is a TorchScript archive of an fp16 model: read, cast, report."""
    path = tmp_path / "RN50.pt"
    half = _tiny_open_clip().half()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(half), str(path))
    cfg = _tiny_cfg()
    tower = CLIPResNet(cfg, attnpool=False)
    pool = AttentionPool2d(cfg.image_size // 32, cfg.feature_dim, cfg.heads, cfg.embed_dim)
    report = load_clip_resnet(path, tower, pool)
    assert report.ok(), report.summary()
    assert report.converted and "fp16" in report.converted[0]
    assert all(p.dtype == torch.float32 for p in [*tower.parameters(), *pool.parameters()])
    ref = half.float().visual.state_dict()
    torch.testing.assert_close(tower.layer1[0].conv2.weight, ref["layer1.0.conv2.weight"])
    torch.testing.assert_close(pool.c_proj.weight, ref["attnpool.c_proj.weight"])
    # without a pool module the attention-pool keys are ignored (and said so)
    bare = CLIPResNet(cfg, attnpool=False)
    rep = bare.load_official(path)
    assert rep.ok() and any(k.startswith("visual.attnpool.") for k in rep.ignored)


def test_key_report_on_mismatched_files(oc):
    bigger = _tiny_open_clip(layers=(1, 1, 2, 1))  # one more block in layer3: the RN50-vs-RN101 situation
    report = CLIPResNet(_tiny_cfg()).load_official(bigger.state_dict())
    assert not report.ok() and report.missing == []
    assert report.unexpected and all(k.startswith("visual.layer3.1.") for k in report.unexpected)
    wider = _tiny_open_clip(embed_dim=16)  # another joint embedding: the attention-pool projection differs
    with pytest.raises(ValueError, match="RN50.pt vs RN101.pt"):
        CLIPResNet(_tiny_cfg()).load_official(wider.state_dict())
    # a bare tower state dict (no ``visual.`` prefix, e.g. a segmentation checkpoint's backbone) loads too
    bare = {k[len("visual."):]: v for k, v in oc.state_dict().items() if k.startswith("visual.")}
    tower, pool, ignored = split_clip_visual_state(bare)
    assert "conv1.weight" in tower and "c_proj.weight" in pool and ignored == []
    assert CLIPResNet(_tiny_cfg()).load_official(bare).ok()


@pytest.mark.parametrize("arch", ["RN50", "RN101"])
def test_real_scale_layout_matches_open_clip_on_meta(arch):
    """The OpenAI key layout and every shape, at real scale, without allocating memory."""
    cfg = clip_resnet_config(arch)
    with torch.device("meta"):
        ours = CLIPResNet(cfg)
        ref = ModifiedResNet(list(cfg.layers), cfg.embed_dim, heads=cfg.heads, image_size=224, width=64)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert set(ours_sd) == set(ref_sd)
    assert all(ours_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    n_tower = sum(p.numel() for n, p in ours.named_parameters() if not n.startswith("attnpool."))
    expected = {"RN50": (23_527_264, 14_789_632), "RN101": (42_519_392, 13_740_544)}[arch]
    assert (n_tower, sum(p.numel() for p in ours.attnpool.parameters())) == expected
    assert cfg.channels == (256, 512, 1024, 2048) and cfg.heads == 32
