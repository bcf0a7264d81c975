"""Item towers (text / ID / hybrid) and user towers (GRU, causal transformer, LM over history text).

Shapes: ``N`` catalog items, ``B`` batch, ``L`` history length, ``D`` embedding dim, ``H`` LM hidden size,
``T`` tokens. Item indices inside models are shifted by one: ``0`` is padding, item ``i`` is ``i + 1``.
"""

from __future__ import annotations

import torch
from torch import nn

from lmrec.models.lm import FrozenPrefix, lm_forward, mean_pool, set_trainable_layers

N_EVENT_CODES = 5  # padding + view, click, purchase, rating


# ------------------------------------------------------------------------------------------ item towers
class IDItemTower(nn.Module):
    """Learned ID embeddings; items never seen in training keep a zero vector (no cold-start signal)."""

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.emb.weight, std=0.02)
        # 1 for items with training interactions; ID vectors of the rest are zeroed (not learned as negatives)
        self.register_buffer("seen", torch.ones(n_items, 1))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(...,) item indices -> (..., D)."""
        return self.emb(idx) * self.seen[idx]

    def all(self) -> torch.Tensor:
        return self.emb.weight * self.seen


class MoEAdaptor(nn.Module):
    """UniSRec's mixture-of-experts adaptor (Hou et al., KDD 2022): ``experts`` parametric whitening
    layers ``(x - b_k) W_k`` mixed by a softmax gate over ``x``: (..., H) -> (..., D). Each expert can
    whiten the LM's anisotropic space its own way; the gate picks per item. With one expert it is a
    linear map (the plain projection)."""

    def __init__(self, hidden: int, dim: int, experts: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.bias = nn.Parameter(torch.zeros(experts, hidden))
        self.weight = nn.Parameter(torch.empty(experts, hidden, dim).normal_(std=0.02))
        self.gate = nn.Linear(hidden, experts, bias=False)
        nn.init.zeros_(self.gate.weight)  # uniform mixture at the start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.softmax(self.gate(x), dim=-1)  # (..., K)
        xd = self.drop(x).unsqueeze(-2) - self.bias  # (..., K, H)
        return torch.einsum("...kh,khd,...k->...d", xd, self.weight, g)


def projection(hidden: int, dim: int, adaptor: str, experts: int, dropout: float) -> nn.Module:
    """The map from pooled LM vectors (..., H) to item vectors (..., D)."""
    if adaptor == "moe":
        return MoEAdaptor(hidden, dim, experts, dropout)
    proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, dim))
    if dim == hidden:
        # start from the LM's own similarity (identity map): training refines it instead of
        # first having to recover it from a random projection
        nn.init.eye_(proj[1].weight)
        nn.init.zeros_(proj[1].bias)
    return proj


class TextItemTower(nn.Module):
    """Pretrained LM over item text, mean pooled, then a projection (or UniSRec adaptor) to ``dim``.

    With ``finetune_layers == 0`` the LM is frozen and its pooled vectors are computed once for the
    whole catalog (``features``, (N, H)); only the projection trains. Otherwise the top layers train and
    item vectors are recomputed from the tokens (``input_ids``/``attention_mask``, (N, T)); with frozen
    layers below them, those run once per catalog (:class:`FrozenPrefix`), not per step.

    A training step that needs every item's vector (the full softmax) can run the LM with gradients only
    on the items of its batch (:meth:`all` with ``live``): the rest read pooled vectors from
    :meth:`refresh`'s last pass, computed without gradients. Gradients then reach the LM through the
    batch's items (its histories and targets, a quarter of Scientific's catalog per batch of 256) and the
    projection through every item.
    """

    def __init__(self, lm: nn.Module, dim: int, finetune_layers: int, dropout: float = 0.1, adaptor: str = "linear", experts: int = 8):
        super().__init__()
        self.lm = lm
        self.finetune_layers = finetune_layers
        set_trainable_layers(lm, finetune_layers)
        self.prefix = FrozenPrefix(lm, finetune_layers) if finetune_layers > 0 else None
        hidden = lm.config.hidden_size
        self.proj = projection(hidden, dim, adaptor, experts, dropout)
        self.stale: torch.Tensor | None = None  # (N, H) pooled vectors of the last refresh()
        self.probing = False  # see hold_lm(): the LM held frozen for now, whatever finetune_layers says
        # filled by set_catalog(); not saved in checkpoints (derived from the LM and the catalog text)
        self.register_buffer("input_ids", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.register_buffer("attention_mask", torch.zeros(0, 1, dtype=torch.long), persistent=False)
        self.register_buffer("features", torch.zeros(0, hidden), persistent=False)

    @property
    def frozen(self) -> bool:
        return self.finetune_layers == 0 or self.probing

    def hold_lm(self, held: bool, features: torch.Tensor | None = None) -> None:
        """Hold the LM frozen (``features``: its pooled vectors of the catalog, (N, H)) or release it to
        train its top ``finetune_layers`` again: the probing stage of ``train.probe_first``."""
        self.probing = held and self.finetune_layers != 0
        set_trainable_layers(self.lm, 0 if self.probing else self.finetune_layers)
        if features is not None:
            self.features = features.to(self.features.dtype)
        self.stale = None

    def set_catalog(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, features: torch.Tensor | None):
        """Tokens (N, T) of every item and, for a frozen LM, their pooled vectors (N, H)."""
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        if self.prefix is not None:
            self.prefix.states = None  # another catalog: its frozen-layer states are built on first use
        if features is not None:
            self.features = features.to(self.features.dtype)

    def pooled(self, idx: torch.Tensor) -> torch.Tensor:
        """(K,) item indices -> (K, H) pooled LM vectors."""
        if self.frozen and len(self.features):
            return self.features[idx]
        ids, mask = self.input_ids[idx], self.attention_mask[idx]
        t = int(mask.sum(1).max()) if len(idx) else 1  # trim padding shared by the whole batch
        if len(idx) and self.prefix is not None and self.prefix.ready(self.input_ids, self.attention_mask):
            return self.prefix.run(idx, ids[:, :t], mask[:, :t])
        return lm_forward(self.lm, ids[:, :t], mask[:, :t])

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(...,) item indices -> (..., D)."""
        flat = idx.reshape(-1)
        uniq, inverse = torch.unique(flat, return_inverse=True)
        return self.proj(self.pooled(uniq))[inverse].reshape(*idx.shape, -1)

    def all(self, chunk: int = 256, live: torch.Tensor | None = None) -> torch.Tensor:
        """(N, D). ``live`` (K,) unique item indices: only they run the LM, the others take the pooled
        vectors of the last :meth:`refresh` (ignored for a frozen LM or before the first refresh)."""
        if self.frozen and len(self.features):
            return self.proj(self.features)
        if live is not None and self.stale is not None:
            pooled = self.stale.index_put((live,), self._pooled_sorted(live, chunk))
            return self.proj(pooled)
        return self.proj(self._pooled_sorted(torch.arange(len(self.input_ids), device=self.input_ids.device), chunk))

    def _pooled_sorted(self, idx: torch.Tensor, chunk: int) -> torch.Tensor:
        # chunks of items of similar length: each is cut to its longest text, so little compute goes to padding
        order = torch.argsort(self.attention_mask[idx].sum(1), stable=True)
        out = torch.cat([self.pooled(idx[order[s : s + chunk]]) for s in range(0, len(order), chunk)])
        return out[torch.argsort(order)]

    @torch.no_grad()
    def refresh(self, skip: torch.Tensor | None = None, chunk: int = 256) -> None:
        """Recompute the pooled LM vector of every item (but ``skip``, (K,) indices whose old values stay:
        the batch's items, which run the LM anyway) for :meth:`all`'s ``live`` steps. Refreshed every step,
        live and cached vectors come from the same weights, so the softmax sees exact values and only the
        LM's gradient through items outside the batch is left out."""
        if self.frozen:
            return
        n = len(self.input_ids)
        idx = torch.arange(n, device=self.input_ids.device)
        if skip is not None and self.stale is not None:
            keep = torch.ones(n, dtype=torch.bool, device=idx.device)
            keep[skip] = False
            idx = idx[keep]
        pooled = self._pooled_sorted(idx, chunk).detach()
        if len(idx) == n:
            self.stale = pooled
        else:
            self.stale[idx] = pooled

    def train(self, mode: bool = True):
        """The LM itself always runs without dropout: cached (frozen layers, :meth:`refresh`) and live
        vectors must come from the same function, or the softmax can tell a batch's items (always live, and
        the positives among them) from the rest by their noise."""
        super().train(mode)
        self.lm.eval()
        return self


class HybridItemTower(nn.Module):
    """Text vector + ID vector; an item unseen in training has only its text part (zero-shot).

    ``id_dropout``: in training, each item's ID part is dropped (zeroed, not rescaled) with this chance per
    call, so the text part must carry the item alone, as it does for an item unseen in training.
    """

    def __init__(self, text: TextItemTower, ids: IDItemTower, id_dropout: float = 0.0):
        super().__init__()
        self.text = text
        self.ids = ids
        self.id_dropout = id_dropout

    def _keep(self, n: int, device) -> torch.Tensor | float:
        if not self.training or self.id_dropout <= 0:
            return 1.0
        return (torch.rand(n, 1, device=device) >= self.id_dropout).float()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(-1)
        uniq, inverse = torch.unique(flat, return_inverse=True)
        keep = self._keep(len(uniq), idx.device)
        ids = (self.ids(uniq) * keep)[inverse].reshape(*idx.shape, -1)
        return self.text(idx) + ids

    def all(self, live: torch.Tensor | None = None) -> torch.Tensor:
        return self.text.all(live=live) + self.ids.all() * self._keep(self.ids.emb.num_embeddings, self.ids.emb.weight.device)


# ------------------------------------------------------------------------------------------ user towers
class SequenceInput(nn.Module):
    """Item vectors (B, L, D) + event-type embedding + dropout, with the padding mask (B, L)."""

    def __init__(self, dim: int, dropout: float, event_embedding: bool):
        super().__init__()
        self.event = nn.Embedding(N_EVENT_CODES, dim, padding_idx=0) if event_embedding else None
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, item_vecs: torch.Tensor, events: torch.Tensor) -> torch.Tensor:
        x = item_vecs
        if self.event is not None:
            x = x + self.event(events)
        return self.drop(self.norm(x))


class GRUUserTower(nn.Module):
    """The seed article's behaviour encoder: a GRU over the history's item vectors. Output (B, L, D).

    The GRU steps through the left padding too, so its states depend on how much there is: histories are
    always padded to the same length (training, evaluation and the exported graph alike)."""

    padding_invariant = False

    def __init__(self, dim: int, layers: int, dropout: float, event_embedding: bool):
        super().__init__()
        self.inp = SequenceInput(dim, dropout, event_embedding)
        self.gru = nn.GRU(dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.out = nn.Linear(dim, dim)

    def forward(self, item_vecs: torch.Tensor, events: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # histories are left-padded, so the last position is always the most recent event
        h, _ = self.gru(self.inp(item_vecs, events))
        return self.out(h)


class TransformerUserTower(nn.Module):
    """Causal self-attention over the history (SASRec-style), learned positions. Output (B, L, D).

    Padding is masked and positions count back from the latest event, so the states of a history do not
    depend on how much left padding it has: a batch may be padded to its longest history only."""

    padding_invariant = True

    def __init__(self, dim: int, layers: int, heads: int, dropout: float, max_len: int, event_embedding: bool,
                 ffn_factor: int = 2, norm_first: bool = True, init_std: float | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"user_tower.heads={heads} must divide item_tower.dim={dim}")
        self.inp = SequenceInput(dim, dropout, event_embedding)
        self.pos = nn.Embedding(max_len, dim)
        block = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=dim * ffn_factor, dropout=dropout, batch_first=True, norm_first=norm_first, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        # pre-LN blocks leave the residual stream unnormalised: one LayerNorm at the end (post-LN ends with one)
        self.norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        if init_std is not None:  # BERT's (and RecBole's) init: N(0, std) weights, zero biases
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=init_std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            for block in self.encoder.layers:
                nn.init.normal_(block.self_attn.in_proj_weight, std=init_std)
                nn.init.zeros_(block.self_attn.in_proj_bias)
        self.max_len = max_len
        self.heads = heads

    def forward(self, item_vecs: torch.Tensor, events: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, length, _ = item_vecs.shape
        # positions count back from the most recent event, so left padding does not shift them
        pos = torch.arange(length - 1, -1, -1, device=item_vecs.device).clamp(max=self.max_len - 1)
        x = self.inp(item_vecs, events) + self.pos(pos).unsqueeze(0)
        # causal + key padding in one (B * heads, L, L) mask; every position may see itself, so padded
        # positions stay finite (a fully masked row would give NaNs that leak through the next layer)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=1)
        blocked = (causal.unsqueeze(0) | pad.unsqueeze(1)) & ~torch.eye(length, dtype=torch.bool, device=x.device)
        h = self.encoder(x, mask=blocked.repeat_interleave(self.heads, dim=0))
        return self.norm(h)


class TextUserTower(nn.Module):
    """The seed's text tower: the LM over the concatenated history text, most recent first: BERT(H).

    Input is tokenised history text (B, T); output (B, 1, D) — one state per history, no per-step outputs.
    """

    def __init__(self, lm: nn.Module, dim: int, dropout: float):
        super().__init__()
        self.lm = lm
        self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(lm.config.hidden_size, dim))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(lm_forward(self.lm, input_ids, attention_mask)).unsqueeze(1)

    def from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, H) cached LM vectors of history texts -> (B, 1, D)."""
        return self.proj(pooled).unsqueeze(1)


__all__ = [
    "MoEAdaptor",
    "IDItemTower",
    "TextItemTower",
    "HybridItemTower",
    "GRUUserTower",
    "TransformerUserTower",
    "TextUserTower",
    "mean_pool",
]
