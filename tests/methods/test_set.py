"""SET (methods/set.py): the spectral decomposition / recombination in both FFT modes, the two token branches,
the trainable split, official checkpoints, the real-scale counts and a small overfit run."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from methods.heads.mmdet_keys import mmdet_mask2former_template, synthetic_state_dict
from methods.registry import get_method_class
from methods.rein import ReinTokens, rein_recipe, rein_token_init_bound
from methods.set import (
    FFT_AXES,
    SET,
    SETConfig,
    SETTokens,
    rename_set_amplitude_keys,
    set_recipe,
    set_reference_template,
    spectral_compose,
    spectral_decompose,
    token_instance_norm,
)

SET_TOKEN_PARAMS = 7_546_881  # the reference LoRAReins + "oursv3" amplitude branch for DINOv2-L


def tiny_set(**fields) -> SET:
    """DINOv2-tiny backbone (4 blocks, width 64) and a very small head with 8 queries / tokens."""
    cfg = SET.default_config(scale="miniature")
    cfg.head = dataclasses.replace(cfg.head, hidden_dim=32, num_queries=8, num_heads=2, pixel_decoder_layers=1,
                                   pixel_decoder_ffn=32, decoder_layers=2, decoder_ffn=32, train_num_points=64)
    cfg.token_length = 8
    for k, v in fields.items():
        setattr(cfg, k, v)
    return SET(cfg)


def tiny_tokens(fft_axes="spatial", C=6, m=4, r=2, layers=1, scale=0.7) -> SETTokens:
    torch.manual_seed(0)
    t = SETTokens(layers, C, token_length=m, lora_dim=r, link_to_query=False, fft_axes=fft_axes).double()
    with torch.no_grad():  # large enough to see every term
        t.scale.fill_(scale)
        for p in (t.learnable_tokens_a, t.learnable_tokens_b, t.learnable_tokens2):
            p.copy_(torch.randn_like(p))
    return t


# ------------------------------------------------------------------------------------------ hand computation
def _dft(n, inverse=False):
    k = torch.arange(n, dtype=torch.float64)
    return torch.exp((1 if inverse else -1) * 2j * math.pi * torch.outer(k, k) / n)


def _branch(feat, T, t2f, dmlp, inorm):
    """Rein's update on one branch, written out: logits f.T (instance-normalised over the tokens for the
    amplitude), / sqrt(C), softmax, token 0 dropped, dmlp(S[:, 1:] t2f(T[1:]) + f)."""
    logits = feat @ T.t()
    if inorm:
        mu = logits.mean(-1, keepdim=True)
        logits = (logits - mu) / torch.sqrt(((logits - mu) ** 2).mean(-1, keepdim=True) + 1e-5)
    s = torch.softmax(logits / math.sqrt(T.shape[1]), dim=-1)
    return dmlp(s[..., 1:] @ t2f(T[1:]) + feat)


def test_spatial_update_matches_explicit_dft_hand_computation():
    """Paper mode: per-sample, per-channel 2-D DFT over the token grid (ortho), phase / amplitude branches,
    amplitude e^{i phase}, inverse DFT, real part, f + alpha dF."""
    t = tiny_tokens("spatial")
    B, h, w, C = 2, 3, 5, 6
    # odd h, w: the DC bin is the only real one, and the offset keeps its phase at 0 (a real bin with a
    # negative value has phase +-pi depending on the sign of a zero imaginary part)
    x = torch.randn(B, 1 + h * w, C, dtype=torch.float64) + 4.0
    out = t(x, 0, grid=(h, w))
    f = x[:, 1:].reshape(B, h, w, C).to(torch.complex128)
    spec = torch.einsum("uy,vx,byxc->buvc", _dft(h), _dft(w), f) / math.sqrt(h * w)
    amp, pha = spec.abs().reshape(B, h * w, C), spec.angle().reshape(B, h * w, C)
    d_pha = _branch(pha, t.learnable_tokens_a[0] @ t.learnable_tokens_b[0], t.mlp_token2feat, t.mlp_delta_f, False)
    d_amp = _branch(amp, t.learnable_tokens2[0], t.mlp_token2feat2, t.mlp_delta_f2, True)
    z = (d_amp * torch.exp(1j * d_pha)).reshape(B, h, w, C)
    dF = (torch.einsum("uy,vx,byxc->buvc", _dft(h, True), _dft(w, True), z) / math.sqrt(h * w)).real
    expected = x[:, 1:] + 0.7 * dF.reshape(B, h * w, C)
    assert torch.equal(out[:, 0], x[:, 0])  # the class token passes unchanged
    torch.testing.assert_close(out[:, 1:], expected, rtol=1e-9, atol=1e-9)
    # sensitive to the amplitude branch's instance norm and to which MLPs each branch uses
    d_amp_plain = _branch(amp, t.learnable_tokens2[0], t.mlp_token2feat2, t.mlp_delta_f2, False)
    assert not torch.allclose(d_amp_plain, d_amp, atol=1e-6)


def _reference_layout_update(t: SETTokens, x):
    """The released code's steps on its own layout: features (N, B, C), fft2 over the last two axes
    (norm "backward"), guarded amplitude / phase, the two branches, stack (re, im) / sqrt(2C),
    irfft2(s=(B, C), norm="ortho")."""
    feats = x[:, 1:].permute(1, 0, 2)  # (N, B, C)
    spec = torch.fft.fft2(feats, norm="backward")
    guard = lambda v: torch.where((v < 1e-5) & (v > -1e-5), torch.full_like(v, 1e-5), v)  # noqa: E731
    amp = torch.sqrt(guard(spec.real ** 2 + spec.imag ** 2))
    pha = torch.atan2(spec.imag, guard(spec.real))
    d_pha = _branch(pha, t.get_tokens(0), t.mlp_token2feat, t.mlp_delta_f, False)
    d_amp = _branch(amp, t.learnable_tokens2[0], t.mlp_token2feat2, t.mlp_delta_f2, True)
    stacked = torch.stack([torch.cos(d_pha) * d_amp, torch.sin(d_pha) * d_amp], dim=-1)
    stacked = stacked / math.sqrt(stacked.shape[2] * stacked.shape[3])
    dF = torch.fft.irfft2(torch.view_as_complex(stacked.contiguous()), s=stacked.shape[1:3], norm="ortho")
    assert dF.shape == feats.shape  # with s given, irfft2 returns (B, C), not 2(C-1) channels
    return x[:, 1:] + t.scale * dF.permute(1, 0, 2)


def test_batch_channel_mode_reproduces_the_released_code():
    t = tiny_tokens("batch_channel")
    x = torch.randn(3, 1 + 5, 6, dtype=torch.float64)
    out = t(x, 0)  # no grid needed: the spectrum is over (batch, channel)
    torch.testing.assert_close(out[:, 1:], _reference_layout_update(t, x), rtol=1e-9, atol=1e-9)
    assert torch.equal(out[:, 0], x[:, 0])


def test_batch_channel_inverse_reads_half_of_the_channel_spectrum():
    """irfft2 on the full spectrum: complex inverse over the batch, complex-to-real over channels from bins
    0..C/2 only (imaginary parts of bins 0 and C/2 ignored), after dividing by sqrt(2C)."""
    torch.manual_seed(1)
    B, N, C = 3, 2, 8
    pha, amp = torch.randn(B, N, C, dtype=torch.float64), torch.randn(B, N, C, dtype=torch.float64)
    out = spectral_compose(pha, amp, "batch_channel")
    z = amp * torch.exp(1j * pha) / math.sqrt(2 * C)
    zb = torch.einsum("ab,bnc->anc", _dft(B, True), z) / math.sqrt(B)
    half = zb[..., : C // 2 + 1].clone()
    half[..., 0], half[..., -1] = half[..., 0].real + 0j, half[..., -1].real + 0j
    weight = torch.full((C // 2 + 1,), 2.0, dtype=torch.float64)
    weight[0] = weight[-1] = 1.0
    k, c = torch.arange(C // 2 + 1, dtype=torch.float64), torch.arange(C, dtype=torch.float64)
    expected = ((half * weight) @ torch.exp(2j * math.pi * torch.outer(k, c) / C)).real / math.sqrt(C)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    upper = amp.clone()
    upper[..., C // 2 + 1:] += 5.0  # bins above C/2 are discarded
    torch.testing.assert_close(spectral_compose(pha, upper, "batch_channel"), out)


def test_round_trips_and_guards():
    torch.manual_seed(0)
    f = torch.randn(3, 6, 8, dtype=torch.float64)
    for norm in ("ortho", "backward"):  # the spatial pair is an exact inverse
        torch.testing.assert_close(spectral_compose(*spectral_decompose(f, "spatial", (2, 3), norm), "spatial",
                                                    (2, 3), norm), f)
    # the released pair returns sqrt(B/2) f (backward forward, ortho inverse, / sqrt(2C))
    torch.testing.assert_close(spectral_compose(*spectral_decompose(f, "batch_channel"), "batch_channel"),
                               math.sqrt(3 / 2) * f)
    pha, amp = spectral_decompose(torch.zeros(1, 4, 2), "spatial")  # square grid inferred
    assert torch.all(amp == math.sqrt(1e-5)) and torch.all(pha == 0)  # squared magnitude raised to 1e-5
    pha, amp = spectral_decompose(-torch.ones(1, 9, 2), "spatial", (3, 3))
    assert torch.all(pha[:, 0] == math.pi)  # a negative real DC term: phase +pi (never -pi)
    torch.testing.assert_close(amp[:, 0], torch.full((1, 2), 3.0))
    assert pha[:, 1:].abs().max() < 1e-6
    with pytest.raises(ValueError, match="grid"):
        spectral_decompose(torch.zeros(1, 6, 2), "spatial")
    with pytest.raises(ValueError, match="fft_axes"):
        spectral_decompose(f, "space")


# ------------------------------------------------------------------------------------------ properties
@pytest.mark.parametrize("fft_axes", FFT_AXES)
def test_identity_when_the_branches_are_zero(fft_axes):
    t = tiny_tokens(fft_axes)
    x = torch.randn(2, 1 + 6, 6, dtype=torch.float64)
    with torch.no_grad():  # zero amplitude delta -> zero spectrum -> zero update, whatever the phase
        t.mlp_delta_f2.weight.zero_()
        t.mlp_delta_f2.bias.zero_()
    assert torch.equal(t(x, 0, grid=(2, 3)), x)
    with torch.no_grad():
        t.mlp_delta_f.weight.zero_()
        t.mlp_delta_f.bias.zero_()
    assert torch.equal(t(x, 0, grid=(2, 3)), x)
    t.reset_parameters()  # back to a live module: the update is small (alpha = 1e-3) but not zero
    d = t(x, 0, grid=(2, 3)) - x
    assert 0 < d.abs().max() < 0.1 and t.scale.item() == pytest.approx(1e-3)


def test_spatial_mode_ignores_batch_mates_released_mode_does_not():
    torch.manual_seed(0)
    x0 = torch.randn(1, 1 + 6, 6, dtype=torch.float64)
    mates_a, mates_b = torch.randn(2, 1 + 6, 6, dtype=torch.float64), torch.randn(3, 1 + 6, 6, dtype=torch.float64)
    for fft_axes, independent in (("spatial", True), ("batch_channel", False)):
        t = tiny_tokens(fft_axes)
        a = t(torch.cat([x0, mates_a]), 0, grid=(2, 3))[0]
        b = t(torch.cat([mates_b, x0]), 0, grid=(2, 3))[-1]
        alone = t(x0, 0, grid=(2, 3))[0]
        if independent:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(a, alone, rtol=1e-10, atol=1e-10)
        else:
            assert (a - b).abs().max() > 1e-3 and (a - alone).abs().max() > 1e-3


def test_amplitude_logits_are_instance_normalised_across_tokens():
    t = tiny_tokens("batch_channel", C=8, m=5)
    _, amp = spectral_decompose(torch.randn(3, 4, 8, dtype=torch.float64), "batch_channel")
    tokens = t.get_amplitude_tokens(0)
    logits = t.amplitude_logits(amp, tokens, 0) * math.sqrt(8)  # undo the 1/sqrt(C) applied after the norm
    torch.testing.assert_close(logits.mean(-1), torch.zeros(3, 4, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(logits.var(-1, unbiased=False), torch.ones(3, 4, dtype=torch.float64),
                               rtol=0, atol=1e-5)
    raw = amp @ tokens.t()  # the reference: F.instance_norm on (N, B, m) normalises each (n, b) over m
    torch.testing.assert_close(logits, F.instance_norm(raw.permute(1, 0, 2)).permute(1, 0, 2))
    torch.testing.assert_close(token_instance_norm(raw), F.instance_norm(raw.permute(1, 0, 2)).permute(1, 0, 2))
    # the phase branch keeps Rein's logits (no norm)
    torch.testing.assert_close(t.attention_logits(amp, t.get_tokens(0), 0), amp @ t.get_tokens(0).t() / math.sqrt(8))


def test_parameters_init_and_query_link_use_the_phase_tokens():
    torch.manual_seed(0)
    t = SETTokens(2, 64, token_length=10, lora_dim=8, query_dim=16)
    bound = rein_token_init_bound(16, 64, None)
    assert t.learnable_tokens2.shape == (2, 10, 64) and t.learnable_tokens2.abs().max() <= bound
    assert t.learnable_tokens2.abs().max() > 0.8 * bound
    assert t.mlp_token2feat2 is not t.mlp_token2feat and t.mlp_delta_f2 is not t.mlp_delta_f
    torch.testing.assert_close(t.queries(), t.link(t.learnable_tokens_a @ t.learnable_tokens_b))
    t.queries().sum().backward()
    assert t.learnable_tokens_a.grad is not None and t.learnable_tokens2.grad is None


# ------------------------------------------------------------------------------------------ training
def test_frozen_backbone_trainable_tokens_and_head():
    torch.manual_seed(0)
    model = tiny_set().train()
    assert isinstance(model.reins, SETTokens) and model.config.fft_axes == "spatial"
    assert get_method_class("set") is SET
    assert not model.backbone.training and model.reins.training
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("reins.", "decode_head.")) for n in trainable)
    images, labels = torch.rand(2, 3, 48, 64) * 255, torch.randint(0, 19, (2, 48, 64))  # 3x4 token grid
    losses = model.training_step(images, labels)
    assert set(losses) == {"loss_cls", "loss_mask", "loss_dice"}
    sum(losses.values()).backward()
    for p in (model.reins.learnable_tokens2, model.reins.learnable_tokens_a):
        assert p.grad is not None and p.grad[0].abs().sum() > 0  # both branches reach the first layer
    assert model.reins.mlp_delta_f2.weight.grad.abs().sum() > 0 and model.reins.scale.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())
    model.eval()
    with torch.no_grad():
        scores = model.predict(torch.rand(1, 3, 48, 80) * 255)  # a 3x5 token grid
    assert scores.shape == (1, 19, 48, 80) and torch.isfinite(scores).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the harness evaluates under autocast
        assert torch.isfinite(model.predict(images[:1])).all()
    released = tiny_set(fft_axes="batch_channel").eval()
    with torch.no_grad():
        assert torch.isfinite(released.predict(images)).all()


def test_overfit_a_fixed_batch(region_batch, overfit):
    torch.manual_seed(0)
    model = tiny_set().train()
    recipe = set_recipe("miniature", lr=1e-2)
    opt = torch.optim.AdamW(model.param_groups(recipe), lr=recipe.lr, weight_decay=recipe.weight_decay)
    images, labels = region_batch
    history = [h["total"] for h in overfit(model, opt, images, labels, 12)]
    assert min(history[-3:]) < 0.7 * history[0], history


def test_recipes_and_weight_decay_rules():
    city = SET.recipe()  # the released config trains on Cityscapes with Rein's 512 recipe
    rein512 = rein_recipe("paper", "gta5")
    assert dataclasses.replace(city, source=rein512.source) == rein512
    assert "JingjunYi/SET" in city.source and city.eval_variant == "rein"
    assert (city.iterations, city.batch_size, city.lr, city.weight_decay, city.warmup_iters, city.crop_size) == \
        (40000, 4, 1e-4, 0.05, 0, (512, 512))
    assert city.augmentation["short_edge_choices"][0] == 256 and city.augmentation["max_long_edge"] == 2048
    assert SET.recipe(source="gta5") == rein512
    mini = SET.recipe(scale="miniature")
    assert mini.iterations < 1000 and mini.crop_size[0] <= 256 and mini.source.startswith("miniature twin")
    with pytest.raises(ValueError, match="sources"):
        SET.recipe(source="synthia")
    decay = {n: g["decay_mult"] for g in tiny_set().param_groups(city) for n in g["names"]}
    assert decay["reins.learnable_tokens2"] == decay["reins.learnable_tokens_a"] == decay["reins.scale"] == 0.0
    assert decay["reins.mlp_delta_f2.weight"] == decay["reins.mlp_token2feat2.bias"] == 1.0


def test_config_fields():
    cfg = SET.default_config(scale="miniature", fft_axes="batch_channel")
    assert isinstance(cfg, SETConfig) and cfg.fft_axes == "batch_channel" and cfg.token_length == 32
    with pytest.raises(ValueError, match="fft_axes"):
        SETConfig(fft_axes="hw")


# ------------------------------------------------------------------------------------------ checkpoints
def test_official_checkpoint_loads_into_the_right_tensors(tmp_path):
    torch.manual_seed(0)
    model = tiny_set()
    cfg = model.config
    template = mmdet_mask2former_template(cfg.head, query_tables=False)
    template["decode_head.querys2feat.weight"] = (cfg.head.hidden_dim, cfg.head.hidden_dim)
    template["decode_head.querys2feat.bias"] = (cfg.head.hidden_dim,)
    template.update(set_reference_template(cfg.vit.depth, cfg.vit.embed_dim, token_length=cfg.token_length,
                                           lora_dim=cfg.lora_dim, query_dim=cfg.head.hidden_dim))
    sd = synthetic_state_dict(template, seed=3)
    path = tmp_path / "set_dinov2_mask2former.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": sd}, path)
    report = model.load_checkpoint(path)
    assert report.missing == [] and report.unexpected == [], report.summary()
    assert torch.equal(model.reins.learnable_tokens2, sd["backbone.reins.learnable_tokens2"])
    assert torch.equal(model.reins.mlp_delta_f2.weight, sd["backbone.reins.mlp_delta_f2.weight"])
    assert torch.equal(model.reins.mlp_token2feat2.bias, sd["backbone.reins.mlp_token2feat2.bias"])
    assert torch.equal(model.reins.learnable_tokens_b, sd["backbone.reins.learnable_tokens_b"])
    assert torch.equal(model.reins.link.merge.weight, sd["backbone.reins.merge.weight"])
    assert torch.equal(model.decode_head.class_predictor.weight, sd["decode_head.cls_embed.weight"])
    fresh = tiny_set()  # our own checkpoints round-trip
    assert fresh.load_checkpoint(model.checkpoint_state_dict()).ok()
    assert torch.equal(fresh.reins.learnable_tokens2, model.reins.learnable_tokens2)
    # the name table is the one place to change for a release with other names
    renamed = rename_set_amplitude_keys({"reins.amp_tokens": torch.ones(1), "reins.amp_mlp.weight": torch.ones(1),
                                         "reins.scale": torch.ones(1)},
                                        table={"amp_tokens": "learnable_tokens2", "amp_mlp.": "mlp_delta_f2."})
    assert set(renamed) == {"reins.learnable_tokens2", "reins.mlp_delta_f2.weight", "reins.scale"}


# ------------------------------------------------------------------------------------------ real scale
def test_real_scale_parameter_counts_on_meta():
    with torch.device("meta"):
        modules = {axes: SETTokens(24, 1024, token_length=100, lora_dim=16, fft_axes=axes) for axes in FFT_AXES}
        rein = ReinTokens(24, 1024, token_length=100, lora_dim=16)
        model = SET(SET.default_config("dinov2_vitl14", fft_axes="batch_channel"))
    amplitude_branch = 24 * 100 * 1024 + 2 * (1024 * 1024 + 1024)
    rein_count = sum(p.numel() for p in rein.parameters())
    assert rein_count == 2_990_081 and amplitude_branch == 4_556_800
    for module in modules.values():
        assert sum(p.numel() for p in module.parameters() if p.requires_grad) == rein_count + amplitude_branch \
            == SET_TOKEN_PARAMS
    reference = set_reference_template(24, 1024)  # the reference state dict of the token module
    assert sum(math.prod(s) for s in reference.values()) == SET_TOKEN_PARAMS
    counts = model.parameter_summary()
    assert counts["per_module"]["reins"] == {"total": SET_TOKEN_PARAMS, "trainable": SET_TOKEN_PARAMS}
    assert counts["per_module"]["backbone"]["trainable"] == 0
    assert counts["trainable"] == SET_TOKEN_PARAMS + 20_579_796


@pytest.mark.parametrize("protocol", ["city2bm", "gta2cbm"])
def test_dry_run_prints_exact_counts(protocol, capsys):
    from runners.run import main

    assert main(["--method", "set", "--protocol", protocol, "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["per_module"]["reins"]["trainable"] == SET_TOKEN_PARAMS
    assert out["params"]["trainable"] == 28_126_677 and out["params"]["total"] == 332_325_333
    assert out["recipe"]["eval_variant"] == "rein" and out["model"]["fft_axes"] == "spatial"
    assert ("JingjunYi/SET" in out["recipe"]["source"]) == (protocol == "city2bm")


# ------------------------------------------------------------------------------------------ runner smoke


@pytest.mark.slow
def test_runner_trains_and_evaluates_two_iterations(run_tiny_cell):
    """``runners.run.main`` end to end on the miniature benchmark (2 iterations; 1 image per eval split)."""
    record = run_tiny_cell("set", "city2bm")
    assert set(record["results"]["targets"]) == {"bdd100k", "mapillary"}
