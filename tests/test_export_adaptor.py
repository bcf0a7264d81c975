"""The text encoder graph with the UniSRec mixture-of-experts adaptor as its head matches PyTorch."""

import numpy as np
import torch


def test_moe_adaptor_head_exports_with_parity(tiny_lm, tmp_path):
    from lmrec.config import load_config
    from lmrec.export import build_text_encoder, ort_session
    from lmrec.models.lm import lm_forward, tokenize
    from lmrec.models.recommender import build_model

    cfg = load_config([], [f"model.item_tower.pretrained={tiny_lm}", "model.item_tower.dim=16", "model.item_tower.finetune_layers=0",
                           "model.item_tower.adaptor=moe", "model.item_tower.adaptor_experts=3"]).model
    torch.manual_seed(0)
    model = build_model(cfg, 4).eval()
    tt = model.text_tower
    with torch.no_grad():  # a gate that prefers different experts for different items
        tt.proj.gate.weight.normal_(std=1.0)
        tt.proj.bias.normal_(std=0.1)
    path = build_text_encoder(model.lm, {"item_vector": tt.proj}, tmp_path / "enc.onnx", tmp_path)
    enc = tokenize(model.tokenizer, ["red running shoe", "cast iron pan with a lid", "yoga mat"], 16)
    with torch.no_grad():
        want = tt.proj(lm_forward(tt.lm, enc["input_ids"], enc["attention_mask"])).numpy()
    got = ort_session(path, 1).run(["item_vector"], {k: v.numpy() for k, v in enc.items()})[0]
    assert got.shape == (3, 16)
    np.testing.assert_allclose(got, want, atol=1e-5)
