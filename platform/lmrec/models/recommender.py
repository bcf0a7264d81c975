"""The two-tower recommender ``f(d, H) = item(d) · user(H)`` and its inference-time scorer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from lmrec.config import ModelConfig
from lmrec.data.encode import Queries, add_history_bias, pad_left
from lmrec.data.text import HISTORY_SEPARATOR, history_text  # noqa: F401 (torch-free, so serving reads them there)
from lmrec.models.lm import cached_encode, load_lm, tokenize
from lmrec.models.losses import Scoring
from lmrec.models.towers import (
    GRUUserTower,
    HybridItemTower,
    IDItemTower,
    TextItemTower,
    TextUserTower,
    TransformerUserTower,
)


class Recommender(nn.Module):
    def __init__(self, cfg: ModelConfig, n_items: int, lm: nn.Module | None = None, tokenizer=None):
        super().__init__()
        it, ut = cfg.item_tower, cfg.user_tower
        dim = it.dim
        self.cfg = cfg
        self.n_items = n_items
        self.tokenizer = tokenizer
        self.scoring = Scoring(cfg.loss.normalize, cfg.loss.temperature)
        needs_lm = it.kind in ("text", "hybrid") or ut.kind == "text"
        if needs_lm and lm is None:
            raise ValueError("this model configuration needs a language model")
        if it.kind == "id":
            self.item_tower: nn.Module = IDItemTower(n_items, dim)
        else:
            text = TextItemTower(lm, dim, it.finetune_layers, adaptor=it.adaptor, experts=it.adaptor_experts)
            self.item_tower = text if it.kind == "text" else HybridItemTower(text, IDItemTower(n_items, dim), it.id_dropout)
        if ut.kind == "gru":
            self.user_tower: nn.Module = GRUUserTower(dim, ut.layers, ut.dropout, ut.event_embedding)
        elif ut.kind == "transformer":
            self.user_tower = TransformerUserTower(
                dim, ut.layers, ut.heads, ut.dropout, ut.max_history, ut.event_embedding, ut.ffn_factor, ut.norm_first, ut.init_std
            )
        else:
            if it.kind == "id":
                raise ValueError("user_tower.kind=text reads item text: use item_tower.kind text or hybrid")
            # siamese, as in the seed article: the same LM reads item text and history text
            self.user_tower = TextUserTower(lm, dim, ut.dropout)
        # model.history_bias: one learned logit offset for the items in the user's recent history
        self.history_bias = nn.Parameter(torch.zeros(())) if cfg.history_bias else None

    @property
    def history_bias_value(self) -> float:
        """The learned history bias as a number (0.0 for a model without one): what export and serving use."""
        return float(self.history_bias.detach()) if self.history_bias is not None else 0.0

    # ------------------------------------------------------------------------------------ items
    @property
    def text_tower(self) -> TextItemTower | None:
        if isinstance(self.item_tower, TextItemTower):
            return self.item_tower
        if isinstance(self.item_tower, HybridItemTower):
            return self.item_tower.text
        return None

    @property
    def id_tower(self) -> IDItemTower | None:
        if isinstance(self.item_tower, IDItemTower):
            return self.item_tower
        if isinstance(self.item_tower, HybridItemTower):
            return self.item_tower.ids
        return None

    @property
    def lm(self) -> nn.Module | None:
        tt = self.text_tower
        return tt.lm if tt is not None else getattr(self.user_tower, "lm", None)

    def set_catalog(self, texts: list[str], seen: np.ndarray | None = None, features: torch.Tensor | None = None) -> None:
        """Attach the catalog: tokens (and frozen-LM vectors) of every item; ``seen`` (N,) bool marks items
        with training interactions (ID vectors of the others are zero)."""
        tt = self.text_tower
        if tt is not None:
            enc = tokenize(self.tokenizer, texts, self.cfg.item_tower.max_text_length)
            if tt.frozen and features is None:
                features = cached_encode(tt.lm, self.tokenizer, texts, self.cfg.item_tower.max_text_length)
            tt.set_catalog(enc["input_ids"], enc["attention_mask"], features if tt.frozen else None)
        idt = self.id_tower
        if idt is not None and seen is not None:
            idt.seen.copy_(torch.tensor(np.asarray(seen), dtype=torch.float32).unsqueeze(1))

    def item_vectors(self, idx: torch.Tensor) -> torch.Tensor:
        """(...,) catalog indices -> (..., D)."""
        return self.item_tower(idx)

    def all_item_vectors(self, live: torch.Tensor | None = None) -> torch.Tensor:
        """(N, D). ``live`` (K,): with a fine-tuned LM, only these items run it; the others take the vectors
        of the last refresh (see :class:`TextItemTower`)."""
        if live is None or self.text_tower is None:
            return self.item_tower.all()
        return self.item_tower.all(live=live)

    # ------------------------------------------------------------------------------------ users
    @property
    def sequential(self) -> bool:
        return not isinstance(self.user_tower, TextUserTower)

    def user_states(self, items: torch.Tensor, events: torch.Tensor, catalog: torch.Tensor | None = None) -> torch.Tensor:
        """Left-padded history, item index + 1 (0 = padding) and event codes, (B, L) -> states (B, L, D);
        state ``j`` summarises events ``0..j`` and predicts event ``j + 1``. ``catalog`` (N, D): every
        item's vector, already computed, to read the history's from."""
        pad = items == 0
        idx = (items - 1).clamp(min=0)
        vecs = (self.item_vectors(idx) if catalog is None else catalog[idx]) * (~pad).unsqueeze(-1)
        return self.user_tower(vecs, events, pad)

    def user_states_from_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Tokenised history text (B, T) -> (B, 1, D)."""
        return self.user_tower(input_ids, attention_mask)


class Scorer:
    """Scores every catalog item for a batch of queries (the evaluator's ``score_fn``).

    The item matrix is computed once per scorer; make a new one after the towers change.
    """

    def __init__(self, model: Recommender, texts: list[str], device: torch.device | str = "cpu", batch_size: int = 256):
        self.model = model
        self.texts = texts
        self.device = torch.device(device)
        self.batch_size = batch_size
        model.eval()
        with torch.no_grad():
            # histories read their items from this matrix: with a fine-tuned LM, running it again for every
            # batch's history items cost 7x a pass over the catalog on Scientific
            self.catalog = model.all_item_vectors()
            self.items = self.catalog.float()

    @torch.no_grad()
    def user_vectors(self, queries: Queries) -> torch.Tensor:
        """(B, D): the state after the whole history."""
        m = self.model
        ut = m.cfg.user_tower
        if not m.sequential:
            out = []
            for s in range(0, len(queries), self.batch_size):
                texts = [history_text(h, self.texts, ut.max_history) for h in queries.histories[s : s + self.batch_size]]
                enc = tokenize(m.tokenizer, texts, ut.max_text_length)
                out.append(m.user_states_from_text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))[:, -1].float())
            return torch.cat(out) if out else torch.zeros(0, self.items.shape[1])
        # histories in order of length, each batch padded to its longest where the user tower does not
        # depend on padding (the transformer): short histories cost little
        lengths = np.array([min(len(h), ut.max_history) for h in queries.histories])
        order = np.argsort(lengths, kind="stable")
        trim = getattr(m.user_tower, "padding_invariant", False)
        out = torch.zeros(len(queries), self.items.shape[1])
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            length = max(1, int(lengths[idx].max())) if trim else ut.max_history
            items = torch.as_tensor(pad_left([queries.histories[i] + 1 for i in idx], length), device=self.device)
            events = torch.as_tensor(pad_left([queries.events[i] for i in idx], length), device=self.device)
            out[torch.as_tensor(idx)] = m.user_states(items, events, self.catalog)[:, -1].float().cpu()
        return out.to(self.device)

    def __call__(self, queries: Queries) -> torch.Tensor:
        scores = self.model.scoring.matrix(self.user_vectors(queries), self.items).cpu()
        if self.model.history_bias is not None:
            add_history_bias(scores.numpy(), queries.histories, self.model.history_bias_value, self.model.cfg.user_tower.max_history)
        return scores


def build_model(cfg: ModelConfig, n_items: int, lm_path: str | None = None, weights_follow: bool = False) -> Recommender:
    """A fresh model. ``lm_path`` overrides where the LM is read from (a checkpoint's ``lm/`` dir);
    ``weights_follow`` builds the LM from its config only, for weights loaded right after."""
    it, ut = cfg.item_tower, cfg.user_tower
    lm = tokenizer = None
    if it.kind in ("text", "hybrid") or ut.kind == "text":
        lm, tokenizer = load_lm(lm_path or it.pretrained, config_only=weights_follow)
    return Recommender(cfg, n_items, lm, tokenizer)
