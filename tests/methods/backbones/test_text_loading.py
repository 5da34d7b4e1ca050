"""Loading CLIP text towers (methods/backbones/text.py: official_text_state, load_official) on hand-built state
dicts under the OpenAI and EVA-CLIP key names: where each key goes, the report, every message in full."""

from __future__ import annotations

import pytest
import torch

from methods.backbones.text import CLIPTextEncoder, build_text_encoder, text_config

pytestmark = pytest.mark.usefixtures("one_thread")


def t(i: float, *shape: int) -> torch.Tensor:
    return torch.full(shape or (1,), float(i))


def test_official_text_state_sorts_every_kind_of_key():
    enc = build_text_encoder("tiny", meta=True)
    state = {
        "text.transformer.resblocks.0.attn.in_proj_weight": t(1), "token_embedding.weight": t(2),
        "positional_embedding": t(3), "transformer.resblocks.1.ln_2.bias": t(4), "ln_final.weight": t(5),
        "text_projection": t(6), "visual.conv1.weight": t(7), "logit_scale": t(8), "logit_bias": t(9),
        "attn_mask": t(10), "input_resolution": t(11), "context_length": t(12), "vocab_size": t(13),
        "text.attn_mask": t(14), "text.logit_scale": t(15), "foo.bar": t(16), "visualx": t(17),
    }
    out, ignored, unexpected = enc.official_text_state(state)
    expected = {
        "text.transformer.resblocks.0.attn.in_proj_weight": t(1), "text.token_embedding.weight": t(2),
        "text.positional_embedding": t(3), "text.transformer.resblocks.1.ln_2.bias": t(4),
        "text.ln_final.weight": t(5), "text.text_projection": t(6),
    }
    assert list(out) == list(expected) and all(torch.equal(out[k], v) for k, v in expected.items())
    assert ignored == ["visual.conv1.weight", "logit_scale", "logit_bias", "attn_mask", "input_resolution",
                       "context_length", "vocab_size", "text.attn_mask", "text.logit_scale"]
    assert unexpected == ["foo.bar", "visualx"]


def _openai_file(enc: CLIPTextEncoder, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """The encoder's tensors under OpenAI's top-level text names, plus a vision key and bookkeeping."""
    torch.manual_seed(3)
    state = {"visual.proj": t(0, 2, 2), "logit_scale": t(4.6)}
    for k, v in enc.state_dict().items():
        state[k[len("text."):]] = torch.randn(v.shape).to(dtype)
    return state


def test_load_report_casts_and_values(tmp_path):
    enc = CLIPTextEncoder(text_config("tiny"))
    state = _openai_file(enc, torch.float16)
    del state["ln_final.bias"], state["text_projection"]
    state["text.extra"] = t(1)
    state["foo"] = t(2)
    path = tmp_path / "ViT-B-16.pt"
    torch.save(state, path)
    rep = enc.load_official(path)
    assert rep.missing == ["text.ln_final.bias", "text.text_projection"]  # sorted
    assert rep.unexpected == ["foo", "text.extra"]  # sorted
    assert rep.ignored == ["visual.proj", "logit_scale"] and rep.converted == []
    assert enc.text.ln_final.weight.dtype == torch.float32
    assert torch.equal(enc.text.ln_final.weight, state["ln_final.weight"].float())
    assert torch.equal(enc.text.transformer.resblocks[1].mlp.c_fc.bias,
                       state["transformer.resblocks.1.mlp.c_fc.bias"].float())


def test_positions_are_cut_to_the_context_length(tmp_path):
    full = CLIPTextEncoder(text_config("tiny"))
    state = _openai_file(full)
    path = tmp_path / "f.pt"
    torch.save(state, path)
    short = CLIPTextEncoder(text_config("tiny", context_length=13))
    rep = short.load_official(path)
    assert rep.ok() and rep.converted == ["text.positional_embedding (first 13 of 77 positions)"]
    assert torch.equal(short.text.positional_embedding, state["positional_embedding"][:13])
    same = CLIPTextEncoder(text_config("tiny"))
    assert same.load_official(path).converted == []  # as many positions as the file: nothing cut
    state13 = dict(state, positional_embedding=state["positional_embedding"][:13])
    torch.save(state13, path)
    assert CLIPTextEncoder(text_config("tiny", context_length=13)).load_official(path).converted == []
    state80 = dict(state, positional_embedding=torch.randn(80, 64))  # more positions than the encoder's 77
    torch.save(state80, path)
    rep = same.load_official(path)
    assert rep.ok() and rep.converted == ["text.positional_embedding (first 77 of 80 positions)"]
    assert torch.equal(same.text.positional_embedding, state80["positional_embedding"][:77])
    state["positional_embedding"] = state["positional_embedding"][:10]  # fewer positions than the model: an error
    torch.save(state, path)
    with pytest.raises(ValueError) as e:
        short.load_official(path)
    assert str(e.value) == (
        f"{path}: text tower shapes do not match the 'tiny' config (width 64, 2 layers, embed 32); is this the right "
        "file for this arch?\n  text.positional_embedding: file (10, 64) vs model (13, 64)")


def test_shape_message_lists_every_mismatch(tmp_path):
    state = _openai_file(CLIPTextEncoder(text_config("tiny")))
    state["ln_final.weight"], state["ln_final.bias"] = t(0, 3), t(0, 5)
    path = tmp_path / "f.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as e:
        CLIPTextEncoder(text_config("tiny")).load_official(path)
    assert str(e.value).endswith("right file for this arch?\n  text.ln_final.weight: file (3,) vs model (64,)\n"
                                 "  text.ln_final.bias: file (5,) vs model (64,)")


def test_meta_encoder_is_materialised_with_its_causal_mask(tmp_path):
    state = _openai_file(CLIPTextEncoder(text_config("tiny", context_length=5)))
    path = tmp_path / "f.pt"
    torch.save(state, path)
    enc = build_text_encoder("tiny", meta=True, context_length=5)
    rep = enc.load_official(path)
    assert rep.ok() and not any(p.is_meta for p in enc.parameters())
    inf = float("-inf")
    mask = torch.tensor([[0, inf, inf, inf, inf], [0, 0, inf, inf, inf], [0, 0, 0, inf, inf], [0, 0, 0, 0, inf],
                         [0, 0, 0, 0, 0]])
    assert enc.text.attn_mask.device.type == "cpu" and torch.equal(enc.text.attn_mask, mask)
    assert torch.equal(enc.text.token_embedding.weight, state["token_embedding.weight"])
