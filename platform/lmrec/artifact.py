"""The artifact format and its loading: what serving runs, without torch.

An artifact directory (written by ``lmrec export``, :mod:`lmrec.export`) holds:

- ``text_encoder.onnx`` — tokens ``(B, T)`` -> ``item_vector`` ``(B, D)`` (and ``user_vector`` for the text
  user tower, which shares the LM): the LM with mean pooling and the projection(s) in the graph. Absent for an
  ID item tower. Used for new items, zero-shot.
- ``user_tower.onnx`` — GRU / transformer user tower: ``item_vectors`` ``(B, L, D)``, ``events`` ``(B, L)`` and
  ``mask`` ``(B, L)`` (1 = event, 0 = left padding) -> ``user_vector`` ``(B, D)``.
- ``items.safetensors`` — the catalog's item matrix ``(N, D)`` as this artifact's own encoder computes it;
  ``id_vectors.safetensors`` — hybrid towers: the ID part ``(N, D)``, added outside ONNX (zero for items unseen
  in training, so a new item is its text vector alone); ``knn.safetensors`` — item-kNN (CSR) for ranking-time
  fusion.
- ``catalog.parquet``, ``config.yaml`` (the training config), ``tokenizer/``, and ``manifest.json``: library
  versions, the quantization recipe, gate results, metrics and the sha256 of every file.

:func:`load_artifact` refuses anything ungated, any file not in the manifest and any file whose sha256 changed;
it reads ONNX, safetensors, Parquet, JSON and a tokenizer.json — nothing is ever unpickled. The text encoder
loads on first use (stages that never encode text do not pay for it) and tokenizes through the ``tokenizers``
library alone when export checked it reproduces transformers exactly (``manifest["tokenizer"]``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lmrec.errors import LmrecError

log = logging.getLogger("lmrec.artifact")

FORMAT = "lmrec-artifact/1"
MANIFEST = "manifest.json"
TEXT_ENCODER = "text_encoder.onnx"
USER_TOWER = "user_tower.onnx"
ITEMS = "items.safetensors"
ID_VECTORS = "id_vectors.safetensors"
KNN = "knn.safetensors"  # item-kNN similarity (CSR) for ranking-time fusion (model.knn_weight)
CATALOG = "catalog.parquet"
CONFIG = "config.yaml"
TOKENIZER_DIR = "tokenizer"
# the kinds of file an artifact may hold: each read by a parser that runs no code (ONNX, safetensors, Parquet,
# JSON, YAML, a tokenizer's vocabulary)
READABLE = frozenset({".onnx", ".safetensors", ".parquet", ".json", ".yaml", ".txt"})
ENCODE_BATCH = 32  # texts per text-encoder call (fp32, fp16, static int8), sorted by length
USER_BATCH = 256

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def artifact_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p != root / MANIFEST)


def ort_session(model: str | Path | bytes, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session; ``threads`` = intra-op threads (set it to the replica's CPUs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=providers or ["CPUExecutionProvider"])


@dataclass
class ModelInfo:
    """What serving needs to know about the towers (the manifest's ``model`` section)."""

    item_tower: str
    user_tower: str
    dim: int
    normalize: bool
    temperature: float
    max_text_length: int
    max_history: int
    user_max_text_length: int
    history_separator: str
    precision: str = "fp32"
    encode_batch: int = ENCODE_BATCH  # texts per text-encoder call (1 for dynamic int8: see quantize_int8)
    history_bias: float = 0.0  # model.history_bias: the learned score offset of the recent history's items

    @classmethod
    def from_config(cls, mc, history_bias: float = 0.0) -> ModelInfo:
        """The model config's shape, with the trained ``history_bias`` (the config only says whether there is one)."""
        from lmrec.data.text import HISTORY_SEPARATOR

        it, ut = mc.item_tower, mc.user_tower
        return cls(it.kind, ut.kind, it.dim, mc.loss.normalize, mc.loss.temperature, it.max_text_length, ut.max_history,
                   ut.max_text_length, HISTORY_SEPARATOR, history_bias=history_bias)


class FastTokenizer:
    """The artifact's tokenizer through the ``tokenizers`` library alone (its ``tokenizer.json``): what
    transformers' fast tokenizer runs underneath, without importing transformers (~6 s and a few hundred
    MB per serving process here). Export uses it only after checking that it gives exactly the ids and
    masks transformers gives on the catalog (``manifest["tokenizer"]``); otherwise serving loads
    transformers as before."""

    def __init__(self, directory: str | Path, spec: dict):
        from tokenizers import Tokenizer

        self.spec = spec
        self._tok = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        self._tok.enable_padding(direction=spec["padding_side"], pad_id=spec["pad_id"], pad_type_id=spec["pad_type_id"],
                                 pad_token=spec["pad_token"])
        self._length: int | None = None

    @staticmethod
    def spec_of(tokenizer) -> dict | None:
        """What :class:`FastTokenizer` needs of a transformers tokenizer (None: not a fast one, or no pad token)."""
        if not getattr(tokenizer, "is_fast", False) or tokenizer.pad_token is None:
            return None
        return {"engine": "tokenizers", "pad_id": int(tokenizer.pad_token_id), "pad_token": str(tokenizer.pad_token),
                "pad_type_id": int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
                "padding_side": tokenizer.padding_side, "truncation_side": tokenizer.truncation_side}

    def __call__(self, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
        """(B, T) int64 ``input_ids`` and ``attention_mask``: padded to the longest, truncated at ``max_length``."""
        if self._length != max_length:
            self._tok.enable_truncation(max_length, direction=self.spec["truncation_side"])
            self._length = max_length
        enc = self._tok.encode_batch([t if t else " " for t in texts])
        return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}


def token_arrays(tokenizer, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
    """(B, T) int64 ``input_ids`` and ``attention_mask`` from a transformers tokenizer or a
    :class:`FastTokenizer`, as training tokenizes (``lmrec.models.lm.tokenize``): empty texts as one space,
    padded to the longest, truncated at ``max_length``."""
    if isinstance(tokenizer, FastTokenizer):
        return tokenizer(texts, max_length)
    enc = tokenizer([t if t else " " for t in texts], padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


class Engine:
    """ONNX Runtime sessions of one artifact: item vectors from text, user vectors from histories, scores.
    The text encoder (and its tokenizer) may be given as ``text_loader``, called on first use: stages that
    never encode text (retrieval, user state) do not pay for loading the LM.

    Histories are catalog indices, oldest first, with their event codes (as in :class:`Queries`).
    """

    def __init__(self, info: ModelInfo, texts: list[str], text_encoder=None, user_tower=None, tokenizer=None,
                 id_vectors: np.ndarray | None = None, items: np.ndarray | None = None, text_loader=None):
        self.info = info
        self.texts = texts
        self._text_encoder, self._tokenizer, self._text_loader = text_encoder, tokenizer, text_loader
        self._text_lock = threading.Lock()
        self.user_tower = user_tower
        self.id_vectors = id_vectors
        self.items = items  # (N, D) catalog matrix; computed by catalog_vectors() when None

    @property
    def has_text(self) -> bool:
        """Whether there is a text encoder (loaded or not yet)."""
        return self._text_encoder is not None or self._text_loader is not None

    @property
    def text_encoder(self):
        self._load_text()
        return self._text_encoder

    @property
    def tokenizer(self):
        self._load_text()
        return self._tokenizer

    def _load_text(self) -> None:
        if self._text_loader is None:
            return
        with self._text_lock:
            if self._text_loader is not None:
                started = time.perf_counter()
                self._text_encoder, self._tokenizer = self._text_loader()
                self._text_loader = None
                log.info("loaded the text encoder in %.1f s (%s tokenizer)", time.perf_counter() - started,
                         "tokenizers" if isinstance(self._tokenizer, FastTokenizer) else "transformers")

    def encode(self, texts: list[str], output: str = "item_vector", max_length: int | None = None) -> np.ndarray:
        """Text -> (K, D) vectors through the text encoder (the text part only for hybrid items), in calls
        of ``info.encode_batch`` texts of similar length."""
        if not self.has_text:
            raise LmrecError("this artifact has no text encoder (an ID item tower): it cannot encode new items")
        max_length = max_length or self.info.max_text_length
        batch_size = self.info.encode_batch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.info.dim), dtype=np.float32)
        encoder, tokenizer = self.text_encoder, self.tokenizer
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            out[idx] = encoder.run([output], token_arrays(tokenizer, [texts[i] for i in idx], max_length))[0]
        return out

    def catalog_vectors(self) -> np.ndarray:
        """(N, D) item matrix: text vectors (+ ID vectors for hybrid), or the ID table."""
        if self.info.item_tower == "id":
            return self.id_vectors
        vecs = self.encode(self.texts)
        return vecs + self.id_vectors if self.id_vectors is not None else vecs

    def user_vectors(self, histories: list[np.ndarray], events: list[np.ndarray]) -> np.ndarray:
        """(B, D): the user state after the whole history."""
        from lmrec.data.encode import pad_left
        from lmrec.data.text import history_text

        if self.items is None:
            self.items = self.catalog_vectors()
        info = self.info
        if info.user_tower == "text":
            texts = [history_text(h, self.texts, info.max_history) for h in histories]
            return self.encode(texts, "user_vector", info.user_max_text_length)
        out = []
        for s in range(0, len(histories), USER_BATCH):
            items = pad_left([h + 1 for h in histories[s : s + USER_BATCH]], info.max_history)
            ev = pad_left(events[s : s + USER_BATCH], info.max_history)
            mask = (items > 0).astype(np.int64)
            vecs = self.items[np.maximum(items - 1, 0)].astype(np.float32)
            out.append(self.user_tower.run(["user_vector"], {"item_vectors": vecs, "events": ev, "mask": mask})[0])
        return np.concatenate(out) if out else np.zeros((0, info.dim), np.float32)

    def scores(self, users: np.ndarray, histories: list[np.ndarray] | None = None) -> np.ndarray:
        """(B, D) user vectors -> (B, N) scores against the catalog (cosine / temperature when normalised);
        with ``histories`` (catalog indices, oldest first) their recent items take the learned history bias."""
        if self.items is None:
            self.items = self.catalog_vectors()
        u, e = users, self.items
        if self.info.normalize:
            u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
            e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
        out = (u @ e.T) / self.info.temperature
        if histories is not None and self.info.history_bias:
            from lmrec.data.encode import add_history_bias

            add_history_bias(out, histories, self.info.history_bias, self.info.max_history)
        return out


def text_part(items: np.ndarray, id_vectors: np.ndarray | None) -> np.ndarray:
    """Item vectors without a hybrid tower's learned ID parts: what the text tower says of each item."""
    return items - id_vectors if id_vectors is not None else items


def text_vectors(engine: Engine) -> np.ndarray | None:
    """The catalog's text-tower vectors (see :func:`text_part`); None without a text tower."""
    if engine.info.item_tower == "id":
        return None
    return text_part(engine.items if engine.items is not None else engine.catalog_vectors(), engine.id_vectors)


def load_knn(blob: bytes, n_items: int, recency: float, neighbours: int):
    """The artifact's item-kNN (:class:`lmrec.baselines.ItemKNN` over catalog positions; ``neighbours``
    per item when it is refitted)."""
    import scipy.sparse as sp
    from safetensors.numpy import load as load_st

    from lmrec.baselines import ItemKNN

    a = load_st(blob)
    sim = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=(n_items, n_items))
    knn = ItemKNN.from_similarity(sim, recency)
    knn.neighbours = neighbours  # from_similarity counts the stored ones, text transfers included
    return knn


# ------------------------------------------------------------------------------------------ loading
@dataclass
class ServingModel:
    """What every serving stage needs from a model, whatever its backend: the catalog's vectors and the two
    towers. Vectors are the towers' raw outputs; when the model scores by cosine (``normalize``) the index
    holds normalised copies and user vectors are normalised before the search."""

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
    history_bias: float = 0.0  # model.history_bias's learned score offset for the recent history's items
    knn_skip_history: bool = True  # model.knn_skip_history: no kNN boost for the recent history's items
    item_id_vectors: np.ndarray | None = None  # (N, D) a hybrid tower's ID part of item_vectors
    _user_fn: object = None  # (vecs (B, L, D), events (B, L), pad (B, L)) -> (B, D)
    _text_user_fn: object = None  # (texts) -> (B, D)
    _item_fn: object = None  # (texts) -> (B, D)

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    @property
    def has_text(self) -> bool:
        """Whether the model reads item text (and so can encode an item posted after the export)."""
        return self._item_fn is not None

    def item_text_vectors(self) -> np.ndarray | None:
        """(N, D) the text tower's part of the item vectors (kNN fusion's text transfer); None for ID-only
        models."""
        return text_part(self.item_vectors, self.item_id_vectors) if self.has_text else None

    def user_vectors_from_item_vectors(self, histories: list[tuple[np.ndarray, list[str]]]) -> np.ndarray:
        """Histories as (item vectors (L, D), event types), oldest first -> (B, D) raw user vectors."""
        from lmrec.data.encode import EVENT_CODE

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


@dataclass
class Artifact:
    """A verified, gated artifact: ONNX Runtime sessions, the item matrix, the catalog."""

    path: Path
    manifest: dict
    engine: Engine
    catalog: pd.DataFrame = field(repr=False)
    knn: object | None = field(default=None, repr=False)  # ItemKNN over catalog positions (older artifacts: None)

    @property
    def items(self) -> np.ndarray:
        return self.engine.items


def verify_artifact(path: str | Path) -> tuple[dict, dict[str, bytes]]:
    """Check the manifest, the gate flag and the sha256 of every file; returns the manifest and the
    verified bytes of the files read directly (ONNX, safetensors, parquet)."""
    path = Path(path)
    f = path / MANIFEST
    if not f.is_file():
        raise LmrecError(f"{path} is not an lmrec artifact: {MANIFEST} is missing (create one with `lmrec export`)")
    try:
        manifest = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise LmrecError(f"{f}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise LmrecError(f"{path}: unsupported artifact format {manifest.get('format')!r} (expected {FORMAT})")
    if not manifest.get("gate", {}).get("passed"):
        why = "; ".join(manifest.get("gate", {}).get("failed", [])) or "no gate result"
        raise LmrecError(f"{path}: refusing an artifact that did not pass its parity gate ({why})")
    listed = manifest.get("files") or {}
    present = {p.relative_to(path).as_posix() for p in artifact_files(path)}
    if present - set(listed):
        raise LmrecError(f"{path}: files not in the manifest: {sorted(present - set(listed))[:3]}")
    foreign = sorted(rel for rel in set(listed) | present if Path(rel).suffix not in READABLE)
    if foreign:  # nothing an artifact holds is read by a loader that could run code (a pickle, say)
        raise LmrecError(f"{path}: {foreign[:3]}: not a kind of file an artifact holds ({', '.join(sorted(READABLE))})")
    blobs = {}
    for rel, digest in listed.items():
        fp = path / rel
        if not fp.is_file():
            raise LmrecError(f"{path}: {rel} is listed in the manifest but missing")
        data = fp.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise LmrecError(f"{path}: checksum mismatch for {rel}: the file was modified after export; re-export the checkpoint")
        if rel.endswith((".onnx", ".safetensors", ".parquet")):
            blobs[rel] = data
    return manifest, blobs


def load_artifact(path: str | Path, threads: int | None = None, providers: list[str] | None = None) -> Artifact:
    """Verify and open an exported artifact (sha256 of every file, the gate flag); ``threads`` sets ONNX
    Runtime's intra-op threads (the replica's CPUs)."""
    from safetensors.numpy import load as load_st

    path = Path(path)
    manifest, blobs = verify_artifact(path)
    info = ModelInfo(**manifest["model"])
    catalog = pd.read_parquet(io.BytesIO(blobs[CATALOG]))
    if providers is None and info.precision == "fp16":
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]

    encoder = blobs.get(TEXT_ENCODER)  # verified bytes, kept (not the other blobs) until first use

    def text_loader():  # on first use: the ONNX session and the tokenizer export checked
        spec = manifest.get("tokenizer") or {}
        if spec.get("engine") == "tokenizers":
            tokenizer = FastTokenizer(path / TOKENIZER_DIR, spec)
        else:  # an artifact from before the check, or a tokenizer it refused
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path / TOKENIZER_DIR))
        return ort_session(encoder, threads, providers), tokenizer

    engine = Engine(
        info,
        catalog["text"].tolist(),
        user_tower=ort_session(blobs[USER_TOWER], threads) if USER_TOWER in blobs else None,
        id_vectors=load_st(blobs[ID_VECTORS])["vectors"] if ID_VECTORS in blobs else None,
        items=load_st(blobs[ITEMS])["vectors"],
        text_loader=text_loader if encoder is not None else None,
    )
    spec = manifest.get("knn") or {}
    knn = load_knn(blobs[KNN], len(catalog), spec["recency"], spec["neighbours"]) if KNN in blobs else None
    return Artifact(path, manifest, engine, catalog, knn)


def serving_model_from_artifact(path: str | Path, threads: int = 1) -> ServingModel:
    """The serving stages' view of a verified artifact."""
    art = load_artifact(path, threads=threads)
    eng, info, catalog = art.engine, art.engine.info, art.catalog
    trained = art.manifest.get("config", {}).get("model", {})  # the training config's model section

    def user_fn(vecs, events, pad):
        mask = (~np.asarray(pad, dtype=bool)).astype(np.int64)
        feed = {"item_vectors": np.asarray(vecs, np.float32), "events": np.asarray(events, np.int64), "mask": mask}
        return eng.user_tower.run(["user_vector"], feed)[0]

    return ServingModel(
        model_version=art.manifest["model_version"],
        item_ids=catalog["item_id"].astype(str).tolist(),
        item_texts=catalog["text"].astype(str).tolist(),
        item_vectors=art.items,
        normalize=info.normalize,
        max_history=info.max_history,
        user_tower_kind=info.user_tower,
        backend="onnx",
        item_counts=catalog["count"].to_numpy() if "count" in catalog else None,
        temperature=info.temperature,
        knn=art.knn,
        item_id_vectors=eng.id_vectors,
        knn_interactions=(art.manifest.get("knn") or {}).get("interactions", 0),
        knn_weight=trained.get("knn_weight", 0.0),
        history_bias=info.history_bias,
        knn_skip_history=trained.get("knn_skip_history", True),
        _user_fn=user_fn if eng.user_tower is not None else None,
        _text_user_fn=(lambda texts: eng.encode(texts, "user_vector", info.user_max_text_length)) if info.user_tower == "text" else None,
        _item_fn=eng.encode if eng.has_text else None,
    )


def load_serving_model(path: str | Path, backend: str = "auto", threads: int = 1) -> ServingModel:
    """``auto``: an exported artifact (``manifest.json``) through ONNX Runtime, else a training checkpoint
    through PyTorch (a development fallback: the only path here that imports torch)."""
    path = Path(path)
    if backend == "auto":
        backend = "onnx" if (path / MANIFEST).is_file() else "torch"
    if backend == "onnx":
        return serving_model_from_artifact(path, threads=threads)
    if backend == "torch":
        return _serving_model_from_checkpoint(path, threads)
    raise LmrecError(f"backend must be auto, onnx or torch, got {backend!r}")


def read_model_version(path: str | Path, backend: str = "auto") -> str:
    """A cheap version string for responses, without loading the model."""
    path = Path(path)
    manifest = path / MANIFEST
    if backend in ("auto", "onnx") and manifest.is_file():
        m = json.loads(manifest.read_text())
        return str(m.get("model_version") or m.get("version") or path.name)
    if backend == "onnx":
        raise LmrecError(f"{path}: no {MANIFEST}: not an exported artifact (run `lmrec export`)")
    from lmrec.checkpoint import read_train_state

    state = read_train_state(path)
    return f"torch:{path.name}@epoch{state.best_epoch or state.epoch}"


def has_knn(path: str | Path) -> bool:
    """Whether the artifact at ``path`` carries an item-kNN to fuse with (read from its manifest)."""
    manifest = Path(path) / MANIFEST
    return manifest.is_file() and KNN in (json.loads(manifest.read_text()).get("files") or {})


def _serving_model_from_checkpoint(path: Path, threads: int) -> ServingModel:
    """A training checkpoint through PyTorch (``backend: torch``; development only)."""
    import torch

    from lmrec.checkpoint import load_checkpoint
    from lmrec.models.lm import lm_forward, tokenize

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
        history_bias=model.history_bias_value,
        knn_skip_history=cfg.knn_skip_history,
        _user_fn=user_fn,
        _text_user_fn=text_user_fn,
        _item_fn=item_fn,
    )
