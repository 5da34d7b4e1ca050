"""CLIP text encoder: encoding, templates, the CoOp path, official-file loading, real-scale shapes (meta)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

from methods.backbones.text import (
    IMAGENET_TEMPLATES,
    TEXT_CONFIGS,
    CLIPTextEncoder,
    build_text_encoder,
    fill_template,
    text_config,
)

TINY_TEXT = dict(width=64, heads=2, layers=2)
TINY_VISION = dict(layers=1, width=32, head_width=16, patch_size=16, image_size=32)


def _tiny_clip(custom_text: bool = False, quick_gelu: bool = True):
    """A tiny open_clip CLIP whose text tower matches the "tiny" config (OpenAI layout, or EVA `text.*`)."""
    torch.manual_seed(0)
    cls = CustomTextCLIP if custom_text else CLIP
    return cls(32, CLIPVisionCfg(**TINY_VISION), CLIPTextCfg(**TINY_TEXT), quick_gelu=quick_gelu).eval()


@pytest.fixture(scope="module")
def enc() -> CLIPTextEncoder:
    torch.manual_seed(1)
    return CLIPTextEncoder(text_config("tiny"))


@pytest.fixture(scope="module")
def clip_model():
    return _tiny_clip()


def test_encode_is_normalised_and_frozen(enc):
    out = enc.encode(["a photo of a road.", "a car", "sky"])
    assert out.shape == (3, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    raw = enc.encode(["a car"], normalize=False)
    torch.testing.assert_close(F.normalize(raw, dim=-1), out[1:2])
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training  # frozen encoders stay in eval mode


def test_tokenize_shapes(enc):
    tokens = enc.tokenize(["car", "traffic light"], context_length=5)
    assert tokens.shape == (2, 5) and tokens.dtype == torch.long
    assert (tokens[:, 0] == enc.sot_token_id).all()
    assert (tokens.gather(1, enc.eot_indices(tokens)[:, None]) == enc.eot_token_id).all()
    assert enc.tokenize(["a"]).shape == (1, 77)
    with pytest.raises(ValueError, match="exceeds"):
        enc.tokenize(["a"], context_length=78)


def test_encode_with_templates_averages(enc):
    classes, templates = ["road", "person"], IMAGENET_TEMPLATES[:3]
    per = enc.encode_templates(classes, templates)
    assert per.shape == (2, 3, 32)
    manual = torch.stack([enc.encode([t.format(c) for t in templates]).mean(0) for c in classes])
    torch.testing.assert_close(enc.encode_with_templates(classes, templates), F.normalize(manual, dim=-1))
    torch.testing.assert_close(per[1, 2], enc.encode([templates[2].format("person")])[0])


def test_templates_and_fill():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert all("{}" in t for t in IMAGENET_TEMPLATES)
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES  # the same public list, as lambdas

    assert IMAGENET_TEMPLATES == tuple(f("{}") for f in OPENAI_IMAGENET_TEMPLATES)
    assert fill_template("a clean origami of a {class}", "bus") == "a clean origami of a bus"
    assert fill_template("a {} in a video game.", "car") == "a car in a video game."
    with pytest.raises(ValueError, match="no class slot"):
        fill_template("a photo", "car")


def test_prompt_embeddings_reproduce_encode(enc):
    texts = ["a photo of a rider.", "terrain", "a blurry photo of the traffic sign."]
    embeds, tokens = enc.token_embedding_of(texts)
    assert embeds.shape == (3, 77, 64) and tokens.shape == (3, 77)
    via_prompt = enc.encode_prompt_embeddings(embeds, enc.eot_indices(tokens), normalize=True)
    torch.testing.assert_close(via_prompt, enc.encode(texts), rtol=0, atol=1e-6)


def test_coop_context_gets_gradients(enc):
    """tqdm-style prompt: [SOS] + n learnable context vectors + class tokens (to length 5) in 13 positions."""
    n_ctx, name_len = 8, 5
    ctx = torch.nn.Parameter(torch.randn(n_ctx, enc.width) * 0.02)
    name_emb, name_tok = enc.token_embedding_of(["road", "sidewalk"], context_length=name_len)
    sos = name_emb[:, :1]
    x = torch.cat([sos, ctx.expand(2, -1, -1), name_emb[:, 1:]], dim=1)  # [2, 1 + 8 + 4 = 13, W]
    eot = enc.eot_indices(name_tok) + n_ctx
    out = enc.encode_prompt_embeddings(x, eot, normalize=True)
    assert out.shape == (2, 32)
    out.sum().backward()
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())


def _assert_matches_clip(encoder: CLIPTextEncoder, model, texts=("a photo of a bus.", "vegetation", "sky")):
    tokens = encoder.tokenize(list(texts))
    with torch.no_grad():
        ref = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(encoder.encode(list(texts)), ref, rtol=0, atol=1e-5)


def test_load_plain_state_dict(tmp_path, clip_model):
    path = tmp_path / "ViT-B-16.pt"
    state = dict(clip_model.state_dict())
    # OpenAI state dicts also carry these bookkeeping entries (dropped when the model is rebuilt)
    state.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(state, path)
    encoder = CLIPTextEncoder(text_config("tiny"))
    report = encoder.load_official(path)
    assert report.missing == [] and report.unexpected == [] and report.ok()
    n_visual = sum(k.startswith("visual.") for k in clip_model.state_dict())
    assert len(report.ignored) == n_visual + 4  # vision keys, logit_scale and the 3 bookkeeping entries
    assert "ignored" in report.summary()
    _assert_matches_clip(encoder, clip_model)


def test_load_torchscript_archive(tmp_path, clip_model):
    """OpenAI's files are TorchScript archives; read with torch.jit.load, then the same key mapping."""
    path = tmp_path / "RN50.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(_tiny_clip())
        torch.jit.save(scripted, str(path))
    encoder = CLIPTextEncoder(text_config("tiny"))
    report = encoder.load_official(path)
    assert report.missing == [] and report.unexpected == []
    _assert_matches_clip(encoder, clip_model)


def test_load_eva_layout_wrapped_and_on_meta(tmp_path):
    """EVA-CLIP layout (`text.*`, GELU), inside a {"state_dict": {"module.": ...}} wrapper, into a meta module."""
    model = _tiny_clip(custom_text=True, quick_gelu=False)
    assert any(k.startswith("text.transformer.") for k in model.state_dict())
    path = tmp_path / "EVA02_CLIP_L_psz14_s4B.pt"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v.half() for k, v in model.state_dict().items()}}, path)
    encoder = build_text_encoder("tiny", meta=True, quick_gelu=False)
    assert encoder.device.type == "meta"
    report = encoder.load_official(path)
    assert report.missing == [] and report.unexpected == []
    assert encoder.device.type == "cpu" and not any(p.is_meta for p in encoder.parameters())
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in encoder.parameters())
    model = model.half().float()  # the file was stored in fp16
    tokens = encoder.tokenize(["a photo of a train.", "wall"])
    with torch.no_grad():
        ref = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(encoder.encode(["a photo of a train.", "wall"]), ref, rtol=0, atol=1e-5)


def test_load_truncates_positions_and_rejects_wrong_arch(tmp_path, clip_model):
    path = tmp_path / "ViT-B-16.pt"
    torch.save(clip_model.state_dict(), path)
    short = CLIPTextEncoder(text_config("tiny", context_length=13))
    report = short.load_official(path)
    assert report.ok() and report.converted and "positional_embedding" in report.converted[0]
    torch.testing.assert_close(short.text.positional_embedding, clip_model.positional_embedding[:13])
    wide = CLIPTextEncoder(text_config("tiny", width=128))
    with pytest.raises(ValueError, match="right file"):
        wide.load_official(path)


def test_config_lookup():
    assert text_config("ViT-B-16").weights_file == "ViT-B-16.pt"
    assert text_config("EVA02-L-14-336").weights_file == "EVA02_CLIP_L_336_psz14_s6B.pt"
    assert text_config("EVA02-L-14-336").quick_gelu is False and text_config("RN50").quick_gelu is True
    assert text_config("RN50").embed_dim == 1024 and text_config("RN101").embed_dim == 512
    assert text_config("tiny", context_length=10).context_length == 10
    with pytest.raises(KeyError, match="available"):
        text_config("ViT-H-14")


@pytest.mark.parametrize("name, params", [
    ("ViT-B-16", 63_428_096),
    ("EVA02-L-14", 123_650_304),
    ("EVA02-L-14-336", 123_650_304),
    ("ViT-L-14-336", 123_650_304),
    ("RN50", 63_690_240),  # text projection 512 -> 1024
    ("RN101", 63_428_096),
])
def test_real_scale_on_meta(name, params):
    encoder = build_text_encoder(name, meta=True)
    assert sum(p.numel() for p in encoder.parameters()) == params
    assert all(p.is_meta for p in encoder.parameters())
    cfg = TEXT_CONFIGS[name]
    assert encoder.text.text_projection.shape == (cfg.width, cfg.embed_dim)
