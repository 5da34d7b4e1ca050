"""FAMix: recipe, per-source freezing, style-mixing statistics, the style bank (mining + cache), released
checkpoints, real-scale parameter counts."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from datasets.transforms import TrainAugmentation, color_jitter
from methods.backbones.text import IMAGENET_TEMPLATES
from methods.famix import (
    FAMIX_STYLES,
    FAMix,
    StyleBank,
    StyleMiningConfig,
    calc_mean_std,
    grid_bounds,
    patch_majority_classes,
    patch_style_mix,
    sample_mixing_weights,
    style_bank_key,
)
from methods.registry import create_method, get_method_class
from runners.train import build_optimizer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster than two on the shared, busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

TEST_MINING = StyleMiningConfig(crop_size=48, batch_size=2, steps=2, templates=IMAGENET_TEMPLATES[:2])


def _mini(seed: int = 0, **changes) -> FAMix:
    torch.manual_seed(seed)
    config = FAMix.default_config(scale="miniature")
    return FAMix(dataclasses.replace(config, **changes))


class _Bands:
    """A tiny training split with ``load`` (raw samples) like SegmentationDataset: sky / building / road bands."""

    name, split = "toy", "train"

    def __init__(self, n: int = 4, size: int = 48, shift: int = 0):
        self.n, self.size, self.shift = n, size, shift

    def __len__(self) -> int:
        return self.n

    def load(self, i: int) -> dict:
        s = self.size
        rng = np.random.default_rng(i + 100 * self.shift)
        label = np.zeros((s, s), np.uint8)
        label[: s // 3], label[s // 3: 2 * s // 3] = 10, 2
        label[:4, :4] = 255
        image = (rng.random((s, s, 3)) * 60 + label[..., None].astype(np.float64) * 10).clip(0, 255).astype(np.uint8)
        return {"image": image, "label": label, "name": f"toy{i}", "dataset": "toy"}


# ------------------------------------------------------------------------------------------ recipe and config
def test_registry_recipe_and_augmentation():
    cls = get_method_class("famix")
    assert cls is FAMix and cls.backbones == ("clip_rn101", "clip_rn50")  # RN101: the paper's comparison row
    r = FAMix.recipe(source="gta5")
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay, r.iterations, r.batch_size) == ("sgd", 0.1, 0.9, 1e-4,
                                                                                          40000, 8)
    assert (r.schedule, r.power, r.warmup_iters, r.norm_decay_mult) == ("poly", 0.9, 0, 1.0)
    assert r.crop_size == (768, 768) and r.gta_split == "train" and r.eval_variant == "famix"
    aug = TrainAugmentation(crop_size=r.crop_size, **r.augmentation)
    assert (aug.rescale, aug.color_jitter, aug.hflip_prob, aug.photometric, aug.cat_max_ratio) == (
        "none", (0.8, 0.8, 0.8), 0.5, False, 1.0)
    groups = {round(g["lr"], 6): (set(g["names"]), g["weight_decay"]) for g in _mini().param_groups(r)}
    assert set(groups) == {0.01, 0.1}  # the backbone at 0.1x; weight decay on everything, BN included
    assert all(n.startswith("backbone.layer4.2.") for n in groups[0.01][0])
    assert all(n.startswith("decode_head.") for n in groups[0.1][0])
    assert any(".bn" in n for n in groups[0.01][0]) and {g[1] for g in groups.values()} == {1e-4}
    # ColorJitter(0.8, 0.8, 0.8): identity at strength 0, deterministic per seed, changes colours otherwise
    img = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    assert np.array_equal(color_jitter(img, (0, 0, 0), np.random.default_rng(1)), img)
    a, b = (color_jitter(img, (0.8, 0.8, 0.8), np.random.default_rng(1)) for _ in range(2))
    assert np.array_equal(a, b) and not np.array_equal(a, img) and a.dtype == np.uint8
    with pytest.raises(ValueError, match="color_jitter"):
        TrainAugmentation(color_jitter=(0.8, 0.8))
    assert len(FAMIX_STYLES) == 20 and len(set(FAMIX_STYLES)) == 20
    assert all(s.endswith(" style") for s in FAMIX_STYLES) and "Cyberpunk Cityscape style" in FAMIX_STYLES


def test_freezing_per_source_exact_trainable_sets():
    base = FAMix.default_config(scale="miniature")
    assert FAMix.config_for_source(base, "gta5").train_layer4 == "last"
    assert FAMix.config_for_source(base, "synthia").train_layer4 == "last"
    assert FAMix.config_for_source(base, "cityscapes").train_layer4 == "all"
    head = {n for n, _ in _mini().decode_head.named_parameters()}
    head = {f"decode_head.{n}" for n in head}
    for mode, prefix in (("last", ("backbone.layer4.2.",)), ("all", ("backbone.layer4.",)), ("none", ())):
        method = _mini(train_layer4=mode)
        trainable = {n for n, p in method.named_parameters() if p.requires_grad}
        expected = head | {n for n, _ in method.named_parameters() if prefix and n.startswith(prefix)}
        assert trainable == expected, mode
        method.train()
        for name, m in method.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                trains = name.startswith("decode_head.") or bool(prefix and (name + ".").startswith(prefix))
                assert m.training == trains, name
        assert not method.attnpool.training
        method.eval()
        assert not any(m.training for m in method.modules())
    # checkpoints carry the trainable part and its BN statistics only
    keys = _mini().trainable_keys()
    assert "backbone.layer4.2.bn1.running_mean" in keys and "backbone.layer4.1.bn1.running_mean" not in keys
    assert not any(k.startswith(("attnpool.", "backbone.layer1.")) for k in keys)


def test_frozen_statistics_do_not_move_in_training():
    method = _mini()
    method.set_style_bank(StyleBank.from_entries({255: [(torch.rand(32), torch.rand(32) + 0.5)]}, 32))
    before = {k: v.clone() for k, v in method.state_dict().items() if "running_mean" in k}
    method.train()
    method.training_step(torch.rand(2, 3, 48, 48) * 255, torch.randint(0, 19, (2, 48, 48)))
    after = method.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("decode_head.", "backbone.layer4.2.")) for k in moved)
    assert any(k.startswith("backbone.layer4.2.") for k in moved)


# ------------------------------------------------------------------------------------------ style mixing
def _feature_map(b=2, c=6, h=12, w=12):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, c, h, w, generator=g) * 2 + 3).relu()  # post-ReLU like layer1


def test_mixing_with_s_one_keeps_features():
    feat = _feature_map()
    mu_t, sigma_t = torch.randn(2, 9, 6), torch.rand(2, 9, 6) + 0.5
    out = patch_style_mix(feat, mu_t, sigma_t, torch.ones(2, 6, 1, 1), grid=3)
    torch.testing.assert_close(out, feat, rtol=1e-5, atol=1e-5)


def test_mixing_with_s_zero_sets_patch_statistics():
    feat = _feature_map(h=13, w=11)  # cells of unequal size
    g = torch.Generator().manual_seed(1)
    mu_t, sigma_t = torch.randn(2, 9, 6, generator=g) + 4, torch.rand(2, 9, 6, generator=g) + 0.5
    out = patch_style_mix(feat, mu_t, sigma_t, torch.zeros(2, 6, 1, 1), grid=3, relu=False)
    cells = [(r0, r1, c0, c1) for r0, r1 in grid_bounds(13, 3) for c0, c1 in grid_bounds(11, 3)]
    for p, (r0, r1, c0, c1) in enumerate(cells):
        mu, sigma = calc_mean_std(out[:, :, r0:r1, c0:c1])
        torch.testing.assert_close(mu.flatten(1), mu_t[:, p], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sigma.flatten(1), sigma_t[:, p], rtol=1e-3, atol=1e-3)
    # invalid cells (no bank entry) keep their statistics; s in between mixes linearly
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[0, 4] = False
    kept = patch_style_mix(feat, mu_t, sigma_t, torch.zeros(2, 6, 1, 1), grid=3, valid=valid, relu=False)
    r0, r1 = grid_bounds(13, 3)[1]
    c0, c1 = grid_bounds(11, 3)[1]
    torch.testing.assert_close(kept[0, :, r0:r1, c0:c1], feat[0, :, r0:r1, c0:c1], rtol=1e-5, atol=1e-5)
    half = patch_style_mix(feat, mu_t, sigma_t, torch.full((2, 6, 1, 1), 0.5), grid=3, relu=False)
    mu_h, _ = calc_mean_std(half[:, :, r0:r1, c0:c1])
    mu_o, _ = calc_mean_std(feat[:, :, r0:r1, c0:c1])
    torch.testing.assert_close(mu_h.flatten(1), 0.5 * mu_o.flatten(1) + 0.5 * mu_t[:, 4], rtol=1e-4, atol=1e-4)
    per_patch = patch_style_mix(feat, mu_t, sigma_t, torch.zeros(9, 2, 6, 1, 1), grid=3, relu=False)
    torch.testing.assert_close(per_patch, out)


def test_beta_draws_shape_and_u_shape(monkeypatch):
    s = sample_mixing_weights((20000,), 0.1)
    inner = ((s > 0.1) & (s < 0.9)).float().mean()
    assert inner < 0.2 and (s < 0.1).float().mean() > 0.35 and (s > 0.9).float().mean() > 0.35
    assert abs(float(s.mean()) - 0.5) < 0.03 and float(s.min()) >= 0 and float(s.max()) <= 1
    # in the method: one draw per sample and channel [B, C, 1, 1] (shared by the 9 patches) or per patch
    seen = []
    import methods.famix as famix

    def spy(shape, alpha, device=None):
        seen.append((tuple(shape), alpha))
        return torch.zeros(shape)

    monkeypatch.setattr(famix, "sample_mixing_weights", spy)
    for per_patch in (False, True):
        method = _mini(mix_s_per_patch=per_patch)
        # banks: class c -> mu = 5 + c, sigma = 0.5 (positive, so the final ReLU changes nothing)
        method.set_style_bank(StyleBank.from_entries(
            {c: [(torch.full((32,), 5.0 + c), torch.full((32,), 0.5))] for c in (0, 2, 10, 255)}, 32))
        labels = torch.zeros(3, 48, 48, dtype=torch.long)
        labels[:, :16], labels[:, 16:32] = 10, 2
        low = torch.rand(3, 32, 12, 12) + 1
        mixed = method.mix_styles(low, labels)
        mu, _ = calc_mean_std(mixed[:, :, 0:4, 0:4])  # top-left cell: sky (10)
        torch.testing.assert_close(mu.flatten(), torch.full((96,), 15.0), rtol=1e-3, atol=1e-3)
        mu, _ = calc_mean_std(mixed[:, :, 8:12, 4:8])  # bottom-middle: road (0)
        torch.testing.assert_close(mu.flatten(), torch.full((96,), 5.0), rtol=1e-3, atol=1e-3)
    assert seen == [((3, 32, 1, 1), 0.1), ((9, 3, 32, 1, 1), 0.1)]


def test_patch_majority_and_bank_sampling(tmp_path):
    labels = torch.full((1, 6, 6), 255, dtype=torch.long)
    labels[0, :2, :2] = torch.tensor([[3, 3], [5, 5]])  # tie 3/5 -> smallest id
    labels[0, :2, 2:4] = torch.tensor([[7, 7], [7, 255]])
    labels[0, 2:4, :] = 1
    maj = patch_majority_classes(labels, 3)
    assert maj.tolist() == [[3, 7, 255, 1, 1, 1, 255, 255, 255]]
    g = torch.Generator().manual_seed(0)
    entries = {1: [(torch.randn(4, generator=g), torch.rand(4, generator=g)) for _ in range(3)],
               255: [(torch.full((4,), -1.0), torch.full((4,), 2.0))]}
    bank = StyleBank.from_entries(entries, 4, meta={"note": "x"})
    assert len(bank) == 4 and bank.counts() == {1: 3, 255: 1}
    torch.manual_seed(0)
    mu, sigma, valid = bank.sample(torch.tensor([[1] * 300 + [7] * 5]))
    assert mu.shape == (1, 305, 4) and valid.all()
    assert (mu[0, 300:] == -1).all() and (sigma[0, 300:] == 2).all()  # empty class -> the 255 bank
    picks = {tuple(m.tolist()) for m in mu[0, :300]}
    assert picks == {tuple(m.tolist()) for m, _ in entries[1]}  # every entry of the class is drawn
    empty = StyleBank.from_entries({2: [(torch.zeros(4), torch.ones(4))]}, 4)
    _, _, valid = empty.sample(torch.tensor([2, 9]))
    assert valid.tolist() == [True, False]
    bank.save(tmp_path / "b.pt")
    again = StyleBank.load(tmp_path / "b.pt")
    assert torch.equal(again.mu, bank.mu) and again.counts() == bank.counts() and again.meta == {"note": "x"}
    (tmp_path / "bad.pt").write_bytes(b"not a bank")
    with pytest.raises(ValueError, match="delete it to mine again"):
        StyleBank.load(tmp_path / "bad.pt")


# ------------------------------------------------------------------------------------------ mining and cache
def test_style_bank_is_mined_once_then_cached(tmp_path):
    method = _mini(mining=TEST_MINING)
    data = _Bands()
    grads_before = [p.grad for p in method.parameters()]
    logs: list[str] = []
    info = method.prepare(data, tmp_path, logs.append, seed=3)
    assert info["cache_hit"] is False and info["num_styles"] == len(method.style_bank) > 0
    path = tmp_path / "famix_styles" / f"{info['key']}.pt"
    assert path.is_file() and path.with_suffix(".json").is_file()
    inputs = json.loads(path.with_suffix(".json").read_text())
    assert inputs["seed"] == 3 and inputs["mining"]["steps"] == 2 and inputs["dataset"]["num_images"] == 4
    assert set(method.style_bank.counts()) <= {0, 2, 10, 255} and method.style_bank.channels == 32
    meta = method.style_bank.meta
    assert meta["mean_loss_last_step"] < meta["mean_loss_first_step"]  # PIN moves (mu, sigma) towards the text
    assert [p.grad for p in method.parameters()] == grads_before  # mining never writes the model's grads
    assert method.training and not method.backbone.layer1.training  # modes restored
    assert any("style mining" in line for line in logs)

    again = _mini(mining=TEST_MINING)  # same seed -> same random weights -> same key
    info2 = again.prepare(data, tmp_path, logs.append, seed=3)
    assert info2["cache_hit"] is True and info2["key"] == info["key"]
    assert torch.equal(again.style_bank.mu, method.style_bank.mu)
    assert torch.equal(again.style_bank.classes, method.style_bank.classes)


def test_style_bank_key_changes_with_every_input():
    method = _mini(mining=TEST_MINING)
    data = _Bands()
    key = style_bank_key(method.style_bank_inputs(data, 0))
    assert style_bank_key(method.style_bank_inputs(_Bands(), 0)) == key  # deterministic
    changed = {
        "seed": style_bank_key(method.style_bank_inputs(data, 1)),
        "dataset": style_bank_key(method.style_bank_inputs(_Bands(shift=1), 0)),
        "dataset size": style_bank_key(method.style_bank_inputs(_Bands(n=3), 0)),
        "mining steps": style_bank_key(_mini(mining=dataclasses.replace(TEST_MINING, steps=3))
                                       .style_bank_inputs(data, 0)),
        "styles": style_bank_key(_mini(mining=dataclasses.replace(TEST_MINING, styles=("Foo Bar style",)))
                                 .style_bank_inputs(data, 0)),
    }
    with torch.no_grad():
        method.backbone.layer2[0].conv1.weight.add_(1e-3)
    changed["weights"] = style_bank_key(method.style_bank_inputs(data, 0))
    assert all(k != key for k in changed.values()), changed
    assert len(set(changed.values())) == len(changed)


def test_training_without_a_bank_says_what_to_do():
    method = _mini()
    with pytest.raises(RuntimeError, match="prepare"):
        method.training_step(torch.rand(2, 3, 48, 48) * 255, torch.zeros(2, 48, 48, dtype=torch.long))
    assert _mini(style_mixing=False).prepare(_Bands(), None) is None


# ------------------------------------------------------------------------------------------ training
def test_overfit_loss_decreases(toy_scene, overfit):
    torch.manual_seed(0)
    method = create_method("famix", scale="miniature")
    c = method.config.resnet.channels[0]
    g = torch.Generator().manual_seed(1)
    method.set_style_bank(StyleBank.from_entries(
        {k: [(torch.rand(c, generator=g), 0.5 + torch.rand(c, generator=g)) for _ in range(3)] for k in (0, 10, 255)},
        c))
    optimizer = build_optimizer(method, FAMix.recipe(scale="miniature"))
    images, labels = toy_scene
    history = [h["loss_ce"] for h in overfit(method, optimizer, images, labels, 20)]
    assert sum(history[-3:]) / 3 < 0.5 * sum(history[:3]) / 3, history
    method.eval()
    with torch.no_grad():
        pred = method.predict(images).argmax(1)
    assert (pred == labels).float().mean() > 0.75


# ------------------------------------------------------------------------------------------ checkpoints
def _reference_state(method: FAMix) -> dict[str, torch.Tensor]:
    """A released-checkpoint-like ``model_state``: the reference ``_Segmentation`` names (``backbone.*`` in
    CLIP's layout without the attention pool, ``classifier.{project, aspp, classifier}``) and shapes."""
    from open_clip.modified_resnet import ModifiedResNet

    cfg = method.config.resnet
    torch.manual_seed(5)
    tower = ModifiedResNet(list(cfg.layers), cfg.embed_dim, heads=cfg.heads, image_size=cfg.image_size,
                           width=cfg.width)
    state = {f"backbone.{k}": v for k, v in tower.state_dict().items() if not k.startswith("attnpool.")}
    h = method.config.head

    def conv(name, cout, cin, k, bias=False):
        state[f"classifier.{name}.weight"] = torch.randn(cout, cin, k, k)
        if bias:
            state[f"classifier.{name}.bias"] = torch.randn(cout)

    def bn(name, c):
        for suffix, value in (("weight", torch.rand(c) + 0.5), ("bias", torch.randn(c)),
                              ("running_mean", torch.randn(c)), ("running_var", torch.rand(c) + 0.5),
                              ("num_batches_tracked", torch.tensor(1000))):
            state[f"classifier.{name}.{suffix}"] = value

    a = h.aspp_channels
    conv("project.0", h.low_level_proj, h.low_level_channels, 1), bn("project.1", h.low_level_proj)
    conv("aspp.convs.0.0", a, h.in_channels, 1), bn("aspp.convs.0.1", a)
    for i in (1, 2, 3):
        conv(f"aspp.convs.{i}.0", a, h.in_channels, 3), bn(f"aspp.convs.{i}.1", a)
    conv("aspp.convs.4.1", a, h.in_channels, 1), bn("aspp.convs.4.2", a)
    conv("aspp.project.0", a, 5 * a, 1), bn("aspp.project.1", a)
    conv("classifier.0", h.decoder_channels, h.low_level_proj + a, 3), bn("classifier.1", h.decoder_channels)
    conv("classifier.3", h.num_classes, h.decoder_channels, 1, bias=True)
    return state


def test_released_checkpoint_loads_with_a_key_report(tmp_path):
    method = _mini()
    state = _reference_state(method)
    path = tmp_path / "best_deeplabv3plus_resnet_clip_gta5.pth"
    torch.save({"cur_itrs": 40000, "model_state": state, "optimizer_state": {"state": {}, "param_groups": []},
                "scheduler_state": {}, "best_score": 0.5}, path)
    report = method.load_checkpoint(path)
    assert report.ok(), report.summary()
    renamed = sum(k.startswith("classifier.") for k in state)
    assert report.converted == [f"classifier.* -> decode_head.* ({renamed} keys)"]
    assert report.ignored == ["best_score", "cur_itrs", "optimizer_state", "scheduler_state"]
    own = method.state_dict()
    torch.testing.assert_close(own["decode_head.aspp.convs.4.1.weight"], state["classifier.aspp.convs.4.1.weight"])
    torch.testing.assert_close(own["decode_head.classifier.3.bias"], state["classifier.classifier.3.bias"])
    key = "backbone.layer1.0.downsample.0.weight"
    torch.testing.assert_close(own[key], state[key])
    method.eval()
    assert method.predict(torch.rand(1, 3, 40, 56) * 255).shape == (1, 19, 40, 56)
    # a bare model_state (DataParallel prefix) works; a head of the wrong width is refused
    report = _mini().load_checkpoint({f"module.{k}": v for k, v in state.items()})
    assert report.ok(), report.summary()
    bad = dict(state)
    bad["classifier.classifier.3.weight"] = torch.randn(7, method.config.head.decoder_channels, 1, 1)
    with pytest.raises(ValueError, match="decode_head.classifier.3.weight"):
        _mini().load_checkpoint(bad)
    # this module's own (trainable-only) checkpoints pass through unchanged
    own_ckpt = method.checkpoint_state_dict()
    assert not any(k.startswith(("attnpool.", "backbone.layer1.")) for k in own_ckpt)
    assert _mini(seed=1).load_checkpoint(own_ckpt).ok()


def test_official_clip_file_feeds_tower_pool_and_mining_text_tower(tmp_path, monkeypatch):
    """One OpenAI-layout file gives the image tower, the attention pool (kept for mining) and the text tower."""
    monkeypatch.setenv("DGSS_CACHE_DIR", str(tmp_path / "cache"))  # the sha256 cache of weights_identity
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    method = _mini()
    cfg = method.config.resnet
    torch.manual_seed(3)
    clip = CLIP(cfg.embed_dim, CLIPVisionCfg(layers=cfg.layers, width=cfg.width, image_size=cfg.image_size),
                CLIPTextCfg(width=64, heads=2, layers=2), quick_gelu=True).eval()
    path = tmp_path / "RN101.pt"
    torch.save({k: v.half() for k, v in clip.state_dict().items()}, path)
    report = method.load_official(path)
    assert report.ok(), report.summary()
    assert any(k.startswith("transformer.") for k in report.ignored)  # the text tower is not the image tower's
    ref = clip.half().float()
    torch.testing.assert_close(method.attnpool.q_proj.weight, ref.visual.attnpool.q_proj.weight)
    torch.testing.assert_close(method.backbone.layer4[2].conv3.weight, ref.visual.layer4[2].conv3.weight)
    encoder = method.mining_text_encoder("cpu", log=lambda *_: None)
    tokens = encoder.tokenize(["a photo of a Frozen Tundra style road."])
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode(["a photo of a Frozen Tundra style road."]),
                                   ref.encode_text(torch.cat([tokens, torch.zeros(1, 45, dtype=torch.long)], 1),
                                                   normalize=True), rtol=0, atol=1e-5)
    identity = method.weights_identity()
    assert identity["file"] == "RN101.pt" and len(identity["sha256"]) == 64
    assert (tmp_path / "cache" / "sha256.json").is_file()


# ------------------------------------------------------------------------------------------ real scale
def test_real_scale_counts_on_meta():
    counts = {}
    for backbone in ("clip_rn50", "clip_rn101"):
        for source in ("gta5", "cityscapes"):
            config = FAMix.config_for_source(FAMix.default_config(backbone), source)
            with torch.device("meta"):
                method = FAMix(config)
            s = method.parameter_summary()
            counts[backbone, source] = (s["total"], s["trainable"])
            assert s["per_module"]["attnpool"]["trainable"] == 0
            if source == "gta5":
                trainable = {n for n, p in method.named_parameters() if p.requires_grad}
                assert all(n.startswith(("backbone.layer4.2.", "decode_head.")) for n in trainable)
            assert [b.dilation for b in method.backbone.layer4] == [1, 1, 2]
    assert counts == {("clip_rn50", "gta5"): (54_570_195, 20_715_891),
                      ("clip_rn50", "cityscapes"): (54_570_195, 31_218_035),
                      ("clip_rn101", "gta5"): (72_513_235, 20_715_891),
                      ("clip_rn101", "cityscapes"): (72_513_235, 31_218_035)}
    method = create_method("famix", "clip_rn50", scale="paper")
    assert set(method.pretrained_loaders()) == {"RN50.pt"}
    # the miniature scale loads the shipped CLIP ResNet stand-in (methods.miniature_weights)
    assert set(create_method("famix", scale="miniature").pretrained_loaders()) == {"CLIP_RN_tiny.pt"}
