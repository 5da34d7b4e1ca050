"""The ViT + Mask2Former skeleton (methods/vit_m2f.py): final semantic logits as mmseg computes them, for
every method built on it."""

import pytest
import torch
import torch.nn.functional as F

from methods.registry import create_method


def mmseg_semantic_logits(pred_logits, pred_masks, size):
    """mmseg ``Mask2FormerHead.predict`` written out: every query's mask logits upsampled (bilinear) to the
    input size, sigmoid, then per class the sum over queries weighted by softmax(class) without no-object."""
    up = F.interpolate(pred_masks, size=size, mode="bilinear", align_corners=False).sigmoid()
    probs = pred_logits.softmax(-1)[..., :-1]
    out = torch.zeros(pred_logits.shape[0], probs.shape[-1], *size)
    for q in range(pred_logits.shape[1]):
        out += probs[:, q, :, None, None] * up[:, q, None]
    return out


@pytest.mark.parametrize("name", ["rein", "set", "vireo", "vltseg", "frozen_m2f"])
def test_predict_upsamples_mask_logits_first_like_mmseg(name):
    torch.manual_seed(0)
    model = create_method(name, scale="miniature").eval()
    images = torch.rand(1, 3, 48, 64) * 255
    with torch.no_grad():
        out = model.forward_head(images)
        got = model.predict(images)
    expected = mmseg_semantic_logits(out["pred_logits"], out["pred_masks"], (48, 64))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
