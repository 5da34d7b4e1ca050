"""Loading OpenAI CLIP ResNet files (methods/backbones/resnet.py: split_clip_visual_state, _load_into,
load_clip_resnet) on hand-built state dicts: which key goes where, what is reported, every message in full."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from methods.backbones.resnet import AttentionPool2d, CLIPResNet, _load_into, clip_resnet_config, load_clip_resnet
from methods.backbones.resnet import split_clip_visual_state

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT_KEYS = ["token_embedding.weight", "positional_embedding", "transformer.resblocks.0.ln_1.weight",
             "ln_final.weight", "text_projection", "logit_scale", "logit_bias", "input_resolution", "context_length",
             "vocab_size", "attn_mask", "text.token_embedding.weight"]


def t(i: float, *shape: int) -> torch.Tensor:
    return torch.full(shape or (1,), float(i))


def test_split_openai_layout():
    state = {"visual.conv1.weight": t(1), "token_embedding.weight": t(2), "visual.attnpool.q_proj.weight": t(3),
             "logit_scale": t(4), "visual.layer1.0.downsample.0.weight": t(5), "visual.attnpool.positional_embedding": t(6),
             "conv1.weight": t(7)}
    tower, pool, ignored = split_clip_visual_state(state)
    assert list(tower) == ["conv1.weight", "layer1.0.downsample.0.weight"]
    assert torch.equal(tower["conv1.weight"], t(1)) and torch.equal(tower["layer1.0.downsample.0.weight"], t(5))
    assert list(pool) == ["q_proj.weight", "positional_embedding"] and torch.equal(pool["positional_embedding"], t(6))
    assert ignored == ["token_embedding.weight", "logit_scale", "conv1.weight"]  # outside visual.: not the tower


def test_split_bare_tower_drops_every_text_key():
    state = {k: t(i) for i, k in enumerate(TEXT_KEYS)}
    state.update({"conv1.weight": t(20), "attnpool.c_proj.bias": t(21), "layer4.2.bn3.running_var": t(22)})
    tower, pool, ignored = split_clip_visual_state(state)
    assert ignored == TEXT_KEYS
    assert list(tower) == ["conv1.weight", "layer4.2.bn3.running_var"] and list(pool) == ["c_proj.bias"]
    assert torch.equal(pool["c_proj.bias"], t(21))


def _two_layers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([("b", nn.Conv2d(1, 2, 1, bias=False)), ("a", nn.BatchNorm2d(2))]))


def test_load_into_reports_casts_and_loads():
    m = _two_layers()
    state = {"b.weight": torch.arange(2.0).reshape(2, 1, 1, 1).half(), "a.running_mean": torch.tensor([1.0, 2.0],
             dtype=torch.float64), "a.weight": torch.tensor([3.0, 4.0]), "a.num_batches_tracked": torch.tensor(5),
             "z.extra": t(1), "y.extra": t(2)}
    missing, unexpected, casts = _load_into(m, state, "visual.", "image tower", "RN50.pt")
    assert missing == ["visual.a.bias", "visual.a.running_var"]  # sorted; num_batches_tracked never reported
    assert unexpected == ["visual.y.extra", "visual.z.extra"]
    assert casts == 2  # fp16 and fp64 tensors; the integer counter is not counted
    assert m.b.weight.dtype == torch.float32 and torch.equal(m.b.weight.flatten(), torch.tensor([0.0, 1.0]))
    assert m.a.running_mean.dtype == torch.float32 and torch.equal(m.a.running_mean, torch.tensor([1.0, 2.0]))
    assert torch.equal(m.a.weight, torch.tensor([3.0, 4.0])) and int(m.a.num_batches_tracked) == 5
    # a file without the BN counters is not "missing" anything else
    missing, _, casts = _load_into(_two_layers(), {"b.weight": t(0, 2, 1, 1, 1)}, "p.", "tower", "f")
    assert missing == ["p.a.bias", "p.a.running_mean", "p.a.running_var", "p.a.weight"] and casts == 0


def test_load_into_meta_module_gets_the_tensors():
    with torch.device("meta"):
        m = nn.Linear(2, 3)
    w, b = torch.arange(6.0).reshape(3, 2), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float16)
    missing, unexpected, casts = _load_into(m, {"weight": w, "bias": b}, "", "pool", "f")
    assert (missing, unexpected, casts) == ([], [], 1)
    assert not m.weight.is_meta and torch.equal(m.weight, w) and torch.equal(m.bias, b.float())
    assert m.bias.dtype == torch.float32  # the module's dtype, not the file's


def test_load_into_shape_message_in_full():
    m = nn.ModuleList([nn.Linear(1, 1, bias=False) for _ in range(13)])
    state = {f"{i}.weight": torch.zeros(2, 1) for i in range(13)}
    with pytest.raises(ValueError) as e:
        _load_into(m, state, "visual.", "image tower", "RN101.pt")
    lines = [f"  visual.{i}.weight: file (2, 1) vs model (1, 1)" for i in range(12)]  # the first 12 only
    assert str(e.value) == ("RN101.pt: image tower shapes do not match the config; is this the right file for this "
                            "architecture (RN50.pt vs RN101.pt)?\n" + "\n".join(lines))


# ------------------------------------------------------------------------------------- load_clip_resnet
CFG = clip_resnet_config("tiny", layers=(1, 1, 1, 1))


def _file(seed: int = 1, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """A tiny tower's tensors under OpenAI's names (``visual.`` + the tower's keys) plus text keys, in fp16."""
    torch.manual_seed(seed)
    src = CLIPResNet(CFG)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    state = {"logit_scale": t(4.6), "token_embedding.weight": t(0, 3, 2)}
    state.update({"visual." + k: (v.to(dtype) if v.is_floating_point() else v) for k, v in src.state_dict().items()})
    state["ln_final.bias"] = t(0, 2)
    return state


def _n_float(state, prefix) -> int:
    return sum(1 for k, v in state.items() if k.startswith(prefix) and v.is_floating_point())


def test_tower_with_its_own_pool():
    state = _file()
    tower = CLIPResNet(CFG)
    rep = load_clip_resnet(state, tower)
    assert rep.missing == [] and rep.unexpected == []
    n = _n_float(state, "visual.")
    assert rep.converted == [f"{n} tensors cast to the model dtype (OpenAI files are fp16)"]
    assert rep.ignored == ["ln_final.bias", "logit_scale", "token_embedding.weight"]  # sorted
    assert torch.equal(tower.attnpool.c_proj.weight, state["visual.attnpool.c_proj.weight"].float())
    assert torch.equal(tower.layer4[0].downsample[0].weight, state["visual.layer4.0.downsample.0.weight"].float())
    # naming the tower's own pool is the same as naming none
    rep2 = load_clip_resnet(state, CLIPResNet(CFG), None)
    assert rep2 == rep
    own = CLIPResNet(CFG)
    assert load_clip_resnet(state, own, own.attnpool) == rep
    # a float32 file: nothing cast, nothing said
    assert load_clip_resnet(_file(dtype=torch.float32), CLIPResNet(CFG)).converted == []


def test_separate_pool_and_tower_without_pool():
    state = _file()
    del state["visual.attnpool.c_proj.bias"], state["visual.layer1.0.bn2.bias"]
    state["visual.attnpool.extra"] = t(1)
    state["visual.layer9.weight"] = t(1)
    tower = CLIPResNet(CFG, attnpool=False)
    pool = AttentionPool2d(CFG.image_size // 32, CFG.feature_dim, CFG.heads, CFG.embed_dim)
    rep = load_clip_resnet(state, tower, pool)
    assert rep.missing == ["visual.layer1.0.bn2.bias", "visual.attnpool.c_proj.bias"]  # tower first, then the pool
    assert rep.unexpected == ["visual.layer9.weight", "visual.attnpool.extra"]
    n = _n_float(state, "visual.") - 2  # the two unexpected tensors are not loaded
    assert rep.converted == [f"{n} tensors cast to the model dtype (OpenAI files are fp16)"]
    assert torch.equal(pool.q_proj.weight, state["visual.attnpool.q_proj.weight"].float())
    # no pool anywhere: the pool's keys are ignored, listed with the text keys (sorted)
    rep = load_clip_resnet(_file(), CLIPResNet(CFG, attnpool=False))
    pool_keys = sorted(k for k in _file() if k.startswith("visual.attnpool."))
    assert len(pool_keys) == 9 and rep.ignored == sorted(pool_keys + ["ln_final.bias", "logit_scale",
                                                                       "token_embedding.weight"])
    assert rep.ok()


def test_shape_errors_name_the_source(tmp_path):
    state = _file()
    state["visual.attnpool.c_proj.weight"] = torch.zeros(16, 256, dtype=torch.float16)
    pool = AttentionPool2d(CFG.image_size // 32, CFG.feature_dim, CFG.heads, CFG.embed_dim)
    with pytest.raises(ValueError) as e:
        load_clip_resnet(state, CLIPResNet(CFG, attnpool=False), pool)
    assert str(e.value) == ("<state dict>: attention pool shapes do not match the config; is this the right file for "
                            "this architecture (RN50.pt vs RN101.pt)?\n  visual.attnpool.c_proj.weight: file (16, 256) vs model (32, 256)")
    path = tmp_path / "RN50.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as e:
        load_clip_resnet(path, CLIPResNet(CFG))
    assert str(e.value).startswith(f"{path}: image tower shapes do not match the config;")
    assert str(e.value).endswith("\n  visual.attnpool.c_proj.weight: file (16, 256) vs model (32, 256)")


def test_any_module_without_a_pool_attribute_is_a_tower():
    tower = nn.Module()
    tower.conv1 = nn.Conv2d(3, 2, 1, bias=False)
    w = torch.arange(6.0).reshape(2, 3, 1, 1)
    rep = load_clip_resnet({"visual.conv1.weight": w, "visual.attnpool.c_proj.bias": t(1)}, tower)
    assert rep.ok() and rep.ignored == ["visual.attnpool.c_proj.bias"] and torch.equal(tower.conv1.weight, w)
