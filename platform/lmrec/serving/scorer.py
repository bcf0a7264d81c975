"""The scorer: user vectors from histories and item vectors for new item text, through the model.

Two backends share one interface (:class:`ServingModel`):

- ``onnx``: the exported, gated artifact (``lmrec export``), int8 by default — what serving runs;
- ``torch``: a training checkpoint through PyTorch — a fallback for development.

Vectors are the towers' raw outputs; when the model scores by cosine (``normalize``) the retrieval
index holds normalised copies and user vectors are normalised before the search.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lmrec.data.encode import EVENT_CODE
from lmrec.errors import LmrecError

log = logging.getLogger(__name__)


@dataclass
class ServingModel:
    """What every serving stage needs from a model: the catalog's vectors and the two towers."""

    model_version: str
    item_ids: list[str]
    item_texts: list[str]
    item_vectors: np.ndarray  # (N, D) float32, raw tower outputs
    normalize: bool
    max_history: int
    user_tower_kind: str  # gru / transformer / text
    backend: str
    item_counts: np.ndarray | None = None  # (N,) training interactions per item: cold-start popularity
    temperature: float = 1.0  # the model's scores are dot products (of unit vectors when normalize) / temperature
    knn: object | None = None  # item-kNN over catalog positions, fused at ranking time (exported artifacts)
    knn_weight: float = 0.0  # the training config's model.knn_weight
    knn_interactions: int = 0  # the interactions the artifact's item-kNN was fitted on
    item_id_vectors: np.ndarray | None = None  # (N, D) a hybrid tower's ID part of item_vectors
    _user_fn: object = None  # (vecs (B, L, D), events (B, L), pad (B, L)) -> (B, D)
    _text_user_fn: object = None  # (texts) -> (B, D)
    _item_fn: object = None  # (texts) -> (B, D)

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    def item_text_vectors(self) -> np.ndarray | None:
        """(N, D) the text tower's part of the item vectors (kNN fusion's text transfer); None for ID-only
        models. Computed when asked: only a retrieval stage that fuses with kNN needs it."""
        from lmrec.export import text_part

        return text_part(self.item_vectors, self.item_id_vectors) if self._item_fn is not None else None

    def user_vectors(self, histories: list[tuple[np.ndarray, list[str]]]) -> np.ndarray:
        """Histories as (item vectors (L, D), event types), oldest first -> (B, D) raw user vectors."""
        n, length = len(histories), self.max_history
        vecs = np.zeros((n, length, self.dim), dtype=np.float32)
        events = np.zeros((n, length), dtype=np.int64)
        pad = np.ones((n, length), dtype=bool)
        for b, (v, ev) in enumerate(histories):
            v, ev = v[-length:], ev[-length:]
            if len(v):
                vecs[b, length - len(v) :] = v
                events[b, length - len(v) :] = [EVENT_CODE[e] for e in ev]
                pad[b, length - len(v) :] = False
        return np.asarray(self._user_fn(vecs, events, pad), dtype=np.float32)

    def user_vectors_from_text(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._text_user_fn(texts), dtype=np.float32)

    def encode_items(self, texts: list[str]) -> np.ndarray:
        """New items, zero-shot through the LM: (B, D). ID-only models cannot encode text."""
        if self._item_fn is None:
            raise LmrecError("this model has no text item tower: it cannot encode new items from text")
        return np.asarray(self._item_fn(texts), dtype=np.float32)


def load_serving_model(path: str | Path, backend: str = "auto", threads: int = 1) -> ServingModel:
    """``auto``: an exported artifact (``manifest.json``) through ONNX Runtime, else a checkpoint
    through PyTorch."""
    path = Path(path)
    if backend == "auto":
        backend = "onnx" if (path / "manifest.json").is_file() else "torch"
    if backend == "onnx":
        from lmrec.export import serving_model_from_artifact

        return serving_model_from_artifact(path, threads=threads)
    if backend == "torch":
        return _torch_model(path, threads)
    raise LmrecError(f"scorer backend must be auto, onnx or torch, got {backend!r}")


def _torch_model(path: Path, threads: int) -> ServingModel:
    import torch

    from lmrec.checkpoint import load_checkpoint
    from lmrec.models.lm import tokenize

    torch.set_num_threads(max(1, threads))
    loaded = load_checkpoint(path)
    model = loaded.model.eval()
    cfg = loaded.config.model
    with torch.no_grad():
        items = model.all_item_vectors().float().numpy()

    @torch.no_grad()
    def user_fn(vecs, events, pad):
        return model.user_tower(torch.as_tensor(vecs), torch.as_tensor(events), torch.as_tensor(pad))[:, -1].numpy()

    @torch.no_grad()
    def text_user_fn(texts):
        enc = tokenize(model.tokenizer, texts, cfg.user_tower.max_text_length)
        return model.user_states_from_text(enc["input_ids"], enc["attention_mask"])[:, -1].numpy()

    item_fn = None
    if model.text_tower is not None:
        tt = model.text_tower

        @torch.no_grad()
        def item_fn(texts):
            from lmrec.models.lm import lm_forward

            enc = tokenize(model.tokenizer, texts, cfg.item_tower.max_text_length)
            return tt.proj(lm_forward(tt.lm, enc["input_ids"], enc["attention_mask"])).numpy()

    state = loaded.state
    return ServingModel(
        model_version=f"torch:{path.name}@epoch{state.best_epoch or state.epoch}",
        item_ids=loaded.catalog["item_id"].astype(str).tolist(),
        item_texts=loaded.catalog["text"].astype(str).tolist(),
        item_vectors=items,
        normalize=cfg.loss.normalize,
        max_history=cfg.user_tower.max_history,
        user_tower_kind=cfg.user_tower.kind,
        backend="torch",
        item_counts=loaded.catalog["count"].to_numpy() if "count" in loaded.catalog else None,
        temperature=cfg.loss.temperature,
        knn_weight=cfg.knn_weight,
        _user_fn=user_fn,
        _text_user_fn=text_user_fn,
        _item_fn=item_fn,
    )


def read_model_version(path: str | Path, backend: str = "auto") -> str:
    """A cheap version string for responses, without loading the model."""
    import json

    path = Path(path)
    manifest = path / "manifest.json"
    if backend in ("auto", "onnx") and manifest.is_file():
        m = json.loads(manifest.read_text())
        return str(m.get("model_version") or m.get("version") or path.name)
    if backend == "onnx":
        raise LmrecError(f"{path}: no manifest.json: not an exported artifact (run `lmrec export`)")
    from lmrec.checkpoint import read_train_state

    state = read_train_state(path)
    return f"torch:{path.name}@epoch{state.best_epoch or state.epoch}"


def replica_cpus(default: int = 1) -> int:
    """CPUs granted to this replica (ray_actor_options.num_cpus), at least 1: the ORT / torch thread count."""
    try:
        import ray

        if not ray.is_initialized():  # get_runtime_context() would start a local Ray
            return max(1, default)
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", default)
    except Exception:  # outside Ray
        cpus = default
    return max(1, int(round(cpus)))


class UserVectors(NamedTuple):
    """User vectors of a batch, whether each may be cached, and the model that computed them (during a
    rollout a stage may reach a replica of the other model: its vectors are never taken for this one's)."""

    vectors: list[np.ndarray]
    cacheable: list[bool]
    model: str


class ScorerCore:
    """The model in one process: user vectors from histories of item ids, item vectors for new text.
    Vectors of items added after export are pulled from the store before each use; items another model
    encoded (the store held them before this artifact served it) wait in ``pending`` for :meth:`reencode`."""

    def __init__(self, model: ServingModel, store):
        self.model = model
        self.store = store
        self.vectors = dict(zip(model.item_ids, model.item_vectors))
        self.texts = dict(zip(model.item_ids, model.item_texts))
        self.catalog = {item_id: row for row, item_id in enumerate(model.item_ids)}
        self.pending: dict[str, tuple[int, str]] = {}  # item -> (version, text) without a vector of this model
        self.item_version = 0
        self._lock = threading.Lock()

    def sync(self) -> None:
        with self._lock:
            for record in self.store.items_since(self.item_version):
                if record.vector is not None:
                    self.pending.pop(record.item_id, None)
                    if not record.removed:  # a removed item keeps its vector: it still describes its users
                        self.vectors[record.item_id] = record.vector
                elif record.text:  # another model's vector, or a tombstone keeping the posted text
                    self.pending[record.item_id] = (record.version, record.text)
                if not record.removed:
                    self.texts[record.item_id] = record.text
                self.item_version = max(self.item_version, record.version)

    def reencode(self, batch: int = 64, cheap: int = 4096) -> int:
        """Write this model's vectors of pending items to the store: up to ``batch`` through the LM and up to
        ``cheap`` whose text is the artifact's catalog text (e.g. a model trained on what ``lmrec collect``
        gathered): those take the catalog's trained vector, no LM call. Returns how many were written.
        Replicas started together share the work by picking at random; a vector another replica wrote first
        is refused by the store, not duplicated."""
        self.sync()
        m = self.model
        with self._lock:
            order = list(self.pending)
            random.shuffle(order)
            from_catalog: dict[str, np.ndarray] = {}
            to_encode: list[str] = []
            for item_id in order:
                row = self.catalog.get(item_id)
                if row is not None and m.item_texts[row] == self.pending[item_id][1]:
                    if len(from_catalog) < cheap:
                        from_catalog[item_id] = m.item_vectors[row]
                elif len(to_encode) < batch:
                    to_encode.append(item_id)
                if len(from_catalog) >= cheap and len(to_encode) >= batch:
                    break
            work = {item_id: self.pending.pop(item_id) for item_id in [*from_catalog, *to_encode]}
        if not work:
            return 0
        try:
            vectors = dict(from_catalog)
            if to_encode:
                vectors.update(zip(to_encode, m.encode_items([work[i][1] for i in to_encode])))
            written = self.store.put_item_vectors([(i, version, vectors[i]) for i, (version, _) in work.items()])
        except BaseException:
            with self._lock:  # still pending (unless a newer record came meanwhile)
                for item_id, entry in work.items():
                    self.pending.setdefault(item_id, entry)
            raise
        self.sync()  # this model's vectors of them (refused ones: the item changed; its new record is pending)
        return sum(written)

    def user_vectors(self, histories: list[list[tuple[str, str]]]) -> UserVectors:
        """Histories as [(item_id, event_type), ...], oldest first -> one raw user vector each, and whether
        it may be cached: False while an item of the history waits for this model's vector (:meth:`reencode`).
        Items the model does not know (never upserted) are skipped; removed items still count."""
        self.sync()
        m = self.model
        if m.user_tower_kind == "text":
            from lmrec.models.recommender import HISTORY_SEPARATOR

            texts = [HISTORY_SEPARATOR.join(self.texts.get(i, "") for i, _ in reversed(h[-m.max_history :])) for h in histories]
            return UserVectors(list(m.user_vectors_from_text(texts)), [True] * len(histories), m.model_version)
        rows, complete = [], []
        pending = self.pending
        for h in histories:
            known = [(i, e) for i, e in h if i in self.vectors]
            vecs = np.stack([self.vectors[i] for i, _ in known]) if known else np.zeros((0, m.dim), np.float32)
            rows.append((vecs, [e for _, e in known]))
            complete.append(not pending or not any(i in pending for i, _ in h))
        return UserVectors(list(m.user_vectors(rows)), complete, m.model_version)

    def encode_items(self, texts: list[str]) -> list[np.ndarray]:
        """Item vectors for texts (an artifact's engine groups them by length, in calls of its encode batch)."""
        return list(self.model.encode_items(texts))

    def item_queries(self, item_ids: list[str]) -> list[np.ndarray | None]:
        """For related items: the user tower over a history of the one item (what users who chose it go on
        to choose), per item; None for an item the model has no vector of (unknown, or waiting for
        :meth:`reencode`). A removed item still has one: alternatives to what is gone."""
        self.sync()
        have = self.texts if self.model.user_tower_kind == "text" else self.vectors
        known = [j for j, item_id in enumerate(item_ids) if item_id in have and item_id not in self.pending]
        out: list[np.ndarray | None] = [None] * len(item_ids)
        if known:
            vectors = self.user_vectors([[(item_ids[j], "view")] for j in known]).vectors
            for j, vector in zip(known, vectors):
                out[j] = vector
        return out


try:
    from ray import serve
except ImportError:  # pragma: no cover
    serve = None


if serve is not None:

    # defaults; deployments/*.yaml override them per environment
    @serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
    class Scorer:
        """A replica of :class:`ScorerCore`. User vectors come in batches the ingress formed; new items'
        texts are grouped by ``@serve.batch`` into one LM call (batch size and wait from ``user_config``)."""

        def __init__(self, artifact: str, backend: str, store: dict):
            from lmrec.serving.user_state import connect_store

            model = load_serving_model(artifact, backend, threads=replica_cpus())
            self.core = ScorerCore(model, connect_store({**store, "model": model.model_version}))
            try:  # the store's items before the first request (a replica starting under load, say in a rollout)
                self.core.sync()
            except LmrecError as exc:
                log.warning("could not read the store's items at start: %s", exc)
            threading.Thread(target=self._reencode_loop, name="lmrec-reencode", daemon=True).start()

        def _reencode_loop(self, idle_s: float = 1.0) -> None:
            """Items another model encoded get this model's vectors (after a rollout to a new artifact: the
            ones posted since its data was collected), a batch at a time, in the background."""
            from lmrec.serving.metrics import count_reencoded

            while True:
                try:
                    n = self.core.reencode()
                    if n:
                        count_reencoded(n)
                        log.info("re-encoded %d item(s) another model had encoded; %d still pending", n, len(self.core.pending))
                except Exception:  # noqa: BLE001 - the store may be down for a while: retried in the next round
                    log.exception("re-encoding items another model encoded failed; retrying")
                    n = 0
                if not n:
                    time.sleep(idle_s)

        def reconfigure(self, config: dict) -> None:
            batch = int(config.get("max_batch_size", 16))
            wait = float(config.get("batch_wait_timeout_s", 0.002))
            self.encode_item.set_max_batch_size(batch)
            self.encode_item.set_batch_wait_timeout_s(wait)

        async def ready(self) -> dict:
            """Answered once the model is loaded (the ingress's health check)."""
            return {"model_version": self.core.model.model_version}

        async def user_vectors(self, histories: list[list[tuple[str, str]]]) -> UserVectors:
            """A batch the caller formed already (the user-state stage's stale users): one model call, no wait."""
            from lmrec.serving.metrics import observe_batch

            observe_batch("user_vectors", len(histories))
            return self.core.user_vectors(histories)

        # every vector leaves with the model that computed it: the caller stores it under that model's name

        async def item_queries(self, item_ids: list[str]) -> tuple[list[np.ndarray | None], str]:
            return self.core.item_queries(item_ids), self.core.model.model_version

        async def encode_items(self, texts: list[str]) -> tuple[list[np.ndarray], str]:
            """Many texts of one request (a bulk item upload): no batching wait."""
            from lmrec.serving.metrics import observe_batch

            observe_batch("encode_items", len(texts))
            return self.core.encode_items(texts), self.core.model.model_version

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
        async def encode_item(self, texts: list[str]) -> list[tuple[np.ndarray, str]]:
            from lmrec.serving.metrics import observe_batch

            observe_batch("encode_item", len(texts))
            model = self.core.model.model_version
            return [(vector, model) for vector in self.core.encode_items(texts)]
