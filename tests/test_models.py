"""Towers, losses and the recommender: shapes, causality, padding, loss values, checkpoints, cache."""

import numpy as np
import pytest
import torch

from lmrec.config import ModelConfig, load_config
from lmrec.data.encode import Queries
from lmrec.models import losses
from lmrec.models.lm import cached_encode, embedding_key, load_lm, mean_pool, set_trainable_layers, transformer_layers
from lmrec.models.recommender import Recommender, Scorer, build_model
from lmrec.models.towers import GRUUserTower, TransformerUserTower

TEXTS = ["red running shoe", "blue trail shoe", "cast iron pan", "steel chef knife", "yoga mat", "foam roller"]


def _model(tiny_lm, **over) -> Recommender:
    sets = [f"model.item_tower.pretrained={tiny_lm}", "model.item_tower.dim=16", "model.user_tower.max_history=8"]
    sets += [f"model.{k}={v}" for k, v in over.items()]
    cfg = load_config([], sets).model
    m = build_model(cfg, len(TEXTS))
    m.set_catalog(TEXTS, np.array([True] * 5 + [False]))
    return m


@pytest.mark.parametrize("item_kind", ["id", "text", "hybrid"])
@pytest.mark.parametrize("user_kind", ["gru", "transformer"])
def test_sequence_model_shapes(tiny_lm, item_kind, user_kind):
    m = _model(tiny_lm, **{"item_tower.kind": item_kind, "user_tower.kind": user_kind})
    assert m.item_vectors(torch.tensor([[0, 1], [2, 3]])).shape == (2, 2, 16)
    assert m.all_item_vectors().shape == (6, 16)
    items = torch.tensor([[0, 0, 1, 2], [3, 4, 5, 6]])  # shifted by one, 0 = padding
    events = torch.tensor([[0, 0, 1, 2], [1, 1, 3, 4]])
    assert m.user_states(items, events).shape == (2, 4, 16)


def test_user_states_read_from_a_computed_catalog_match_the_towers(tiny_lm):
    m = _model(tiny_lm, **{"item_tower.kind": "hybrid", "item_tower.finetune_layers": 1}).eval()
    items = torch.tensor([[0, 0, 1, 2], [3, 4, 5, 6]])
    events = torch.tensor([[0, 0, 1, 2], [1, 1, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(m.user_states(items, events, m.all_item_vectors()), m.user_states(items, events), atol=1e-5)


def test_text_user_tower_shape_and_siamese_lm(tiny_lm):
    m = _model(tiny_lm, **{"user_tower.kind": "text"})
    assert m.user_tower.lm is m.text_tower.lm  # BERT(d) . BERT(H): one LM reads both
    ids = torch.randint(5, 100, (3, 7))
    assert m.user_states_from_text(ids, torch.ones_like(ids)).shape == (3, 1, 16)


def test_id_tower_zeroes_items_unseen_in_training(tiny_lm):
    m = _model(tiny_lm, **{"item_tower.kind": "id"})
    assert torch.all(m.all_item_vectors()[5] == 0)
    assert torch.any(m.all_item_vectors()[4] != 0)


def test_transformer_is_causal_and_ignores_left_padding():
    torch.manual_seed(0)
    tower = TransformerUserTower(8, layers=2, heads=2, dropout=0.0, max_len=10, event_embedding=True).eval()
    x = torch.randn(1, 5, 8)
    ev = torch.ones(1, 5, dtype=torch.long)
    pad = torch.zeros(1, 5, dtype=torch.bool)
    out = tower(x, ev, pad)
    x2 = x.clone()
    x2[0, 4] = torch.randn(8)  # change the last event only
    out2 = tower(x2, ev, pad)
    assert torch.allclose(out[0, :4], out2[0, :4], atol=1e-5)
    assert not torch.allclose(out[0, 4], out2[0, 4])
    # the same history with three more padding slots on the left gives the same final state
    xp = torch.cat([torch.zeros(1, 3, 8), x], 1)
    evp = torch.cat([torch.zeros(1, 3, dtype=torch.long), ev], 1)
    padp = torch.cat([torch.ones(1, 3, dtype=torch.bool), pad], 1)
    outp = tower(xp, evp, padp)
    assert torch.isfinite(outp).all()
    assert torch.allclose(outp[0, -1], out[0, -1], atol=1e-5)


def test_gru_ignores_left_padding():
    torch.manual_seed(0)
    tower = GRUUserTower(8, layers=1, dropout=0.0, event_embedding=False).eval()
    x = torch.randn(1, 4, 8)
    ev = torch.zeros(1, 4, dtype=torch.long)
    out = tower(x, ev, torch.zeros(1, 4, dtype=torch.bool))
    assert out.shape == (1, 4, 8)


def test_lm_freezing_and_pooling(tiny_lm):
    lm, _ = load_lm(tiny_lm)
    set_trainable_layers(lm, 1)
    top = transformer_layers(lm)[-1]
    assert all(p.requires_grad for p in top.parameters())
    assert not any(p.requires_grad for p in lm.embeddings.parameters())
    set_trainable_layers(lm, 0)
    assert not any(p.requires_grad for p in lm.parameters())
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.allclose(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def _text_tower(tiny_lm, finetune_layers=1):
    from lmrec.models.lm import tokenize
    from lmrec.models.towers import TextItemTower

    lm, tok = load_lm(tiny_lm)
    texts = [f"{t} number {i}, {'with extras ' * (i % 4)}" for i, t in enumerate(TEXTS * 8)]
    enc = tokenize(tok, texts, 24)
    tower = TextItemTower(lm, 16, finetune_layers)
    tower.set_catalog(enc["input_ids"], enc["attention_mask"], None)
    return tower


def _full_forward(tower, idx):
    from lmrec.models.lm import lm_forward

    ids, mask = tower.input_ids[idx], tower.attention_mask[idx]
    t = int(mask.sum(1).max())
    return lm_forward(tower.lm, ids[:, :t], mask[:, :t])


def test_fine_tuning_the_top_layer_runs_it_on_cached_states_of_the_frozen_ones(tiny_lm):
    tower = _text_tower(tiny_lm)
    bottom, top = transformer_layers(tower.lm)
    tower.eval()
    idx = torch.tensor([0, 3, 5, 17, 30])
    with torch.no_grad():
        got = tower.pooled(idx)
        assert tower.prefix.states is not None and not tower.prefix.disabled
        assert torch.allclose(got, _full_forward(tower, idx), atol=1e-5)
        everything = torch.arange(len(tower.input_ids))  # all(): chunks of similar lengths, in catalog order
        assert torch.allclose(tower.all(chunk=7), tower.proj(_full_forward(tower, everything)), atol=1e-5)

    computed = []
    bottom.attention.register_forward_hook(lambda *a: computed.append("bottom"))
    tower.train()
    tower.all().pow(2).sum().backward()
    assert computed == []  # the frozen layer answered from the cache in every chunk
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())
    assert all(p.grad is None for p in bottom.parameters()) and all(p.grad is None for p in tower.lm.embeddings.parameters())
    assert "forward" not in vars(bottom)  # nothing left behind on the module
    assert set(tower.state_dict()) == set(_text_tower(tiny_lm, 0).state_dict())  # checkpoints are unchanged

    with torch.no_grad():  # a frozen weight changes (a checkpoint loaded): the states are computed again
        bottom.output.dense.weight.mul_(2.0)
        tower.eval()
        assert torch.allclose(tower.pooled(idx), _full_forward(tower, idx), atol=1e-5)


def test_fine_tuning_runs_every_layer_when_cached_states_would_not_reproduce_the_lm(tiny_lm, monkeypatch, caplog):
    from lmrec.models.lm import FrozenPrefix

    monkeypatch.setattr(FrozenPrefix, "_check", lambda self, ids, mask: (False, "max difference 1.0"))
    tower = _text_tower(tiny_lm)
    tower.eval()
    idx = torch.arange(6)
    with torch.no_grad(), caplog.at_level("WARNING"):
        got = tower.pooled(idx)
    assert tower.prefix.disabled and tower.prefix.states is None
    assert "runs every LM layer" in caplog.text and "max difference 1.0" in caplog.text
    assert torch.allclose(got, _full_forward(tower, idx), atol=1e-6)


def test_unknown_lm_is_a_clear_error():
    from lmrec.errors import LmrecError

    with pytest.raises(LmrecError, match="item_tower.pretrained"):
        load_lm("/nonexistent/model-dir")


# ------------------------------------------------------------------------------------------- losses
def test_full_softmax_matches_cross_entropy_and_masks_disallowed():
    s = losses.Scoring(normalize=False, temperature=1.0)
    h = torch.tensor([[1.0, 0.0]])
    items = torch.tensor([[2.0, 0.0], [1.0, 0.0], [50.0, 0.0]])
    allowed = torch.tensor([True, True, False])
    # logits 2, 1 (third masked): CE for target 0 = -log(e^2 / (e^2 + e^1))
    expected = -np.log(np.exp(2) / (np.exp(2) + np.exp(1)))
    assert float(losses.full_softmax(h, torch.tensor([0]), items, s, allowed)) == pytest.approx(expected, rel=1e-6)


def test_sampled_softmax_without_negatives_is_in_batch_softmax():
    s = losses.Scoring(normalize=False, temperature=1.0)
    emb = torch.eye(4)
    h = torch.tensor([[3.0, 0, 0, 0], [0, 2.0, 0, 0]])
    t = torch.tensor([0, 1])
    allowed = torch.tensor([True, True, False, False])
    g = torch.Generator().manual_seed(0)
    # negatives are drawn from allowed items {0, 1} only, so the candidate set stays {0, 1}
    loss = losses.sampled_softmax(h, t, lambda i: emb[i], s, allowed, 3, None, g)
    expected = np.mean([-np.log(np.exp(3) / (np.exp(3) + 1)), -np.log(np.exp(2) / (np.exp(2) + 1))])
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # logQ: a popular candidate's logit is lowered more than a rare one's
    log_pop = torch.log(torch.tensor([0.9, 0.1, 1e-9, 1e-9]))
    corrected = losses.sampled_softmax(h, t, lambda i: emb[i], s, allowed, 3, log_pop, torch.Generator().manual_seed(0))
    assert float(corrected) != pytest.approx(float(loss))


def test_bpr_and_squared_error_values():
    s = losses.Scoring(normalize=False, temperature=1.0)
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    h = torch.tensor([[2.0, 0.0]])
    allowed = torch.tensor([False, True])  # the only possible negative is item 1
    bpr = losses.bpr(h, torch.tensor([0]), lambda i: emb[i], s, allowed)
    assert float(bpr) == pytest.approx(-np.log(1 / (1 + np.exp(-2.0))), rel=1e-6)
    # rating 4 vs predicted 2 -> (4-2)^2; negative predicted 0 -> 0; mean of both halves, times 0.5
    se = losses.squared_error(h, torch.tensor([0]), torch.tensor([4.0]), lambda i: emb[i], allowed, 2)
    assert float(se) == pytest.approx(0.5 * 4.0)


# ------------------------------------------------------------------------------------ scoring, cache
def test_scorer_ranks_with_the_model_and_checkpoint_round_trip(tiny_lm, tmp_path):
    from lmrec.checkpoint import TrainState, load_checkpoint, save_checkpoint
    from lmrec.config import Config

    m = _model(tiny_lm, **{"item_tower.kind": "hybrid"})
    q = Queries(np.array(["u1", "u2"], dtype=object), [np.array([0, 1]), np.array([2])], [np.array([1, 2]), np.array([3])], [np.array([2]), np.array([3])])
    before = Scorer(m, TEXTS)(q)
    assert before.shape == (2, 6)
    cfg = Config(model=m.cfg)
    save_checkpoint(tmp_path / "ck", m, cfg, np.array([f"i{i}" for i in range(6)]), TEXTS, np.array([True] * 5 + [False]), TrainState(epoch=3))
    assert not (tmp_path / "ck.partial").exists()
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.state.epoch == 3
    assert loaded.catalog["item_id"].tolist()[:2] == ["i0", "i1"]
    assert torch.allclose(Scorer(loaded.model, TEXTS)(q), before, atol=1e-5)


def test_embedding_cache_hits_and_follows_the_weights(tiny_lm):
    lm, tok = load_lm(tiny_lm)
    key = embedding_key(lm, TEXTS, 16)
    first = cached_encode(lm, tok, TEXTS, 16)
    assert torch.equal(cached_encode(lm, tok, TEXTS, 16), first)
    with torch.no_grad():
        transformer_layers(lm)[-1].intermediate.dense.weight.mul_(3.0)
    assert embedding_key(lm, TEXTS, 16) != key  # a changed tower is a new cache entry
    assert embedding_key(lm, TEXTS, 32) != key
    assert not torch.allclose(cached_encode(lm, tok, TEXTS, 16), first)


def test_text_model_refuses_configs_it_cannot_honour(tiny_lm):
    cfg = ModelConfig.model_validate({"item_tower": {"kind": "id", "pretrained": tiny_lm}, "user_tower": {"kind": "text"}})
    with pytest.raises(ValueError, match="user_tower.kind=text"):
        build_model(cfg, 3)


# ------------------------------------------------------------------------------- fine-tuning variants
def test_moe_adaptor_with_one_expert_is_a_whitening_map_and_mixes_experts_by_the_gate():
    from lmrec.models.towers import MoEAdaptor

    torch.manual_seed(0)
    one = MoEAdaptor(6, 4, experts=1, dropout=0.0)
    x = torch.randn(5, 6)
    assert torch.allclose(one(x), (x - one.bias[0]) @ one.weight[0], atol=1e-6)
    two = MoEAdaptor(6, 4, experts=2, dropout=0.0)
    with torch.no_grad():
        two.gate.weight[0, 0] = 50.0  # a large first feature sends the item to expert 0
    x = torch.zeros(1, 6)
    x[0, 0] = 1.0
    assert torch.allclose(two(x), (x - two.bias[0]) @ two.weight[0], atol=1e-5)
    assert two(torch.randn(3, 7, 6)).shape == (3, 7, 4)


def test_moe_adaptor_model_trains_its_experts_and_round_trips(tiny_lm, tmp_path):
    m = _model(tiny_lm, **{"item_tower.kind": "hybrid", "item_tower.finetune_layers": 0, "item_tower.adaptor": "moe",
                           "item_tower.adaptor_experts": 3})
    assert m.text_tower.proj.weight.shape == (3, 32, 16)  # tiny LM hidden 32 -> dim 16
    m.all_item_vectors().pow(2).sum().backward()
    assert m.text_tower.proj.weight.grad.abs().sum() > 0


def test_item_id_dropout_drops_whole_id_vectors_in_training_only(tiny_lm):
    m = _model(tiny_lm, **{"item_tower.kind": "hybrid", "item_tower.finetune_layers": 0, "item_tower.id_dropout": 0.5})
    tower = m.item_tower
    tower.eval()
    with torch.no_grad():
        assert torch.allclose(tower.all(), tower.text.all() + tower.ids.all())
    tower.train()
    tower.text.eval()  # no projection dropout: the difference is the ID part alone
    torch.manual_seed(0)
    with torch.no_grad():
        got = tower.all() - tower.text.all()
    kept = got.abs().sum(1) > 0
    ids = tower.ids.all()
    assert 0 < int(kept[:5].sum()) < 5  # some of the 5 seen items kept their ID vector, some did not
    assert torch.allclose(got[kept], ids[kept])


def test_batch_items_run_the_lm_and_the_rest_read_the_last_refresh(tiny_lm):
    tower = _text_tower(tiny_lm)
    tower.eval()  # no dropout: live and refreshed vectors of an unchanged LM agree
    live = torch.tensor([2, 9, 30])
    assert torch.allclose(tower.all(live=live), tower.all())  # no refresh yet: every item runs the LM
    tower.refresh()
    with torch.no_grad():
        assert torch.allclose(tower.all(live=live), tower.all(), atol=1e-5)
    top = transformer_layers(tower.lm)[-1]
    out = tower.all(live=live)
    out[live].sum().backward()
    assert top.output.dense.weight.grad.abs().sum() > 0
    top.output.dense.weight.grad = None
    out = tower.all(live=live)
    stale_only = torch.tensor([0, 1, 3])  # items outside the batch: the LM gets no gradient through them
    out[stale_only].sum().backward()
    assert top.output.dense.weight.grad is None or top.output.dense.weight.grad.abs().sum() == 0
    assert tower.proj[1].weight.grad.abs().sum() > 0


def test_probing_holds_the_lm_frozen_then_releases_its_top_layer(tiny_lm):
    tower = _text_tower(tiny_lm).eval()
    features = torch.randn(len(tower.input_ids), 32)
    tower.hold_lm(True, features)
    assert tower.frozen and not any(p.requires_grad for p in tower.lm.parameters())
    assert torch.allclose(tower.all(), tower.proj(features))
    tower.hold_lm(False)
    top = transformer_layers(tower.lm)[-1]
    assert not tower.frozen and all(p.requires_grad for p in top.parameters())


def test_post_ln_transformer_is_causal_with_a_wider_feed_forward():
    torch.manual_seed(0)
    tower = TransformerUserTower(8, 2, 2, 0.0, 10, False, ffn_factor=4, norm_first=False).eval()
    assert tower.encoder.layers[0].linear1.out_features == 32 and not tower.encoder.layers[0].norm_first
    x = torch.randn(1, 5, 8)
    ev, pad = torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 5, dtype=torch.bool)
    x2 = x.clone()
    x2[0, 4] = torch.randn(8)
    assert torch.allclose(tower(x, ev, pad)[0, :4], tower(x2, ev, pad)[0, :4], atol=1e-5)


def test_alignment_loss_values():
    a = torch.eye(3)
    # identical views at a low temperature: each row is its own nearest, the loss is ~0
    assert float(losses.alignment(a, a, 0.01)) < 1e-6
    # orthogonal-to-everything views score every pair equally: log(3) both ways
    b = torch.ones(3, 3)
    assert abs(float(losses.alignment(a, b, 1.0)) - float(np.log(3))) < 1e-6


def test_transformer_init_std_draws_every_weight_from_a_normal_of_that_std():
    torch.manual_seed(0)
    tower = TransformerUserTower(64, 2, 2, 0.5, 50, False, ffn_factor=4, norm_first=False, init_std=0.02)
    block = tower.encoder.layers[0]
    for w in (block.self_attn.in_proj_weight, block.linear1.weight, block.linear2.weight, tower.pos.weight):
        assert float(w.detach().std()) == pytest.approx(0.02, rel=0.1)
    assert not block.linear1.bias.any() and not block.self_attn.in_proj_bias.any()


def test_refresh_skips_the_batch_items_and_the_lm_never_drops_out(tiny_lm):
    tower = _text_tower(tiny_lm)
    tower.train()
    assert tower.training and not tower.lm.training  # no dropout inside the LM: cached == live values
    tower.refresh()
    old = tower.stale.clone()
    top = transformer_layers(tower.lm)[-1]
    with torch.no_grad():
        top.output.dense.weight.mul_(1.5)  # the LM moved since
    skip = torch.tensor([1, 4])
    tower.refresh(skip=skip)
    rest = torch.tensor([i for i in range(len(old)) if i not in (1, 4)])
    assert torch.equal(tower.stale[skip], old[skip])
    with torch.no_grad():
        assert torch.allclose(tower.stale[rest], tower.pooled(rest), atol=1e-5)
        assert not torch.allclose(tower.stale[rest], old[rest])


def test_sequence_softmax_is_the_next_item_cross_entropy_plus_history_bias_and_later_targets():
    torch.manual_seed(0)
    items = torch.tensor([[0, 0, 1, 2, 3], [1, 2, 3, 4, 5], [0, 0, 0, 6, 6]])  # index + 1, left padded
    states, catalog = torch.randn(3, 4, 4), torch.randn(7, 4)
    scoring, allowed = losses.Scoring(True, 0.5), torch.ones(7, dtype=torch.bool)
    keep = items[:, :-1] > 0
    plain = losses.full_softmax(states[keep], items[:, 1:][keep] - 1, catalog, scoring, allowed)
    assert torch.allclose(losses.sequence_softmax(states, items, catalog, scoring, allowed), plain)
    # the history mask: state j of a window has seen its items 0..j, once each
    mask = losses.history_mask(items[:, :-1], keep, 7)
    assert mask.tolist()[:2] == [[1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]]
    assert mask[-1].tolist() == [0, 0, 0, 0, 0, 1, 0]  # item 6 seen once, counted once
    # by hand: the bias on each state's history logits, then the next item and the one after at 0.5
    logits = scoring.matrix(states[keep], catalog) - 1.0 * mask
    rows = torch.cumsum(keep.reshape(-1), 0).reshape(keep.shape) - 1
    second = torch.zeros_like(items[:, :-1])
    second[:, :3] = items[:, 2:]
    pair = keep & (second > 0)
    want = (torch.nn.functional.cross_entropy(logits, items[:, 1:][keep] - 1)
            + 0.5 * torch.nn.functional.cross_entropy(logits[rows[pair]], second[pair] - 1))
    got = losses.sequence_softmax(states, items, catalog, scoring, allowed, torch.tensor(-1.0), 2, 0.5)
    assert torch.allclose(got, want)


def test_history_bias_is_learned_scored_on_the_recent_history_and_round_trips(tiny_lm, tmp_path):
    from lmrec.checkpoint import TrainState, load_checkpoint, save_checkpoint
    from lmrec.config import Config

    m = _model(tiny_lm, **{"item_tower.kind": "hybrid", "history_bias": "true"})
    assert float(m.history_bias.detach()) == 0.0 and m.history_bias.requires_grad
    with torch.no_grad():
        m.history_bias.fill_(-2.5)
    hist = [np.arange(10) % 6, np.array([2])]  # the first longer than max_history 8: its last 8 items count
    q = Queries(np.array(["u1", "u2"], dtype=object), hist, [np.ones(10, dtype=np.int64), np.array([3])], [np.array([2]), np.array([3])])
    with_bias = Scorer(m, TEXTS)(q)
    no_bias = m.cfg.model_copy(update={"history_bias": False})
    plain = Recommender(no_bias, len(TEXTS), m.lm, m.tokenizer)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if k != "history_bias"})
    plain.set_catalog(TEXTS, np.array([True] * 5 + [False]))
    diff = with_bias - Scorer(plain, TEXTS)(q)
    expect = torch.zeros(2, 6)
    expect[0, :] = -2.5  # items 2..9 % 6 = every item
    expect[1, 2] = -2.5
    assert torch.allclose(diff, expect, atol=1e-5)
    save_checkpoint(tmp_path / "ck", m, Config(model=m.cfg), np.array([f"i{i}" for i in range(6)]), TEXTS, np.array([True] * 5 + [False]), TrainState())
    assert float(load_checkpoint(tmp_path / "ck").model.history_bias.detach()) == -2.5


def test_history_bias_and_future_targets_need_a_sequential_softmax_model():
    for sets in (["model.history_bias=true", "model.loss.kind=bpr"], ["model.loss.future_targets=3", "model.user_tower.kind=text"]):
        with pytest.raises(Exception, match="needs model.loss.kind=softmax"):
            load_config([], sets)
