"""The ViT + Mask2Former skeleton (methods/vit_m2f.py): final semantic logits as mmseg computes them, for
every method built on it."""

import pytest
import torch

from methods.registry import create_method
from tests.methods.heads.test_mask2former import mmseg_semantic_logits  # mmseg's predict, written out


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
