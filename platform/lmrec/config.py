"""Typed configuration: pydantic models loaded from YAML, with ``--set a.b=c`` overrides.

Precedence, lowest to highest (the one place it is defined):

1. defaults written in the models below;
2. YAML files, in the order given (a later file overrides an earlier one, key by key);
3. command-line shorthands such as ``--dataset`` (each is sugar for one ``--set``);
4. ``--set key.path=value`` overrides, in order (values are parsed as YAML: ``3``, ``true``, ``[10, 20]``).

Unknown keys are rejected at every level, so a typo fails loudly with the path of the bad key.
Relative data paths (``data.path``, ``data.items_path``) in a YAML file resolve from that file's folder, so
a config travels with its data; on the command line (``--set``) they resolve from the current directory.
``$LMREC_DATA_DIR`` (and other variables, and ``~``) in them are expanded. Outputs (``output_dir``) are
relative to the current directory.

The one environment setting is ``LMREC_DATA_DIR``: where named datasets are looked up.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lmrec.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------------------------- data
class SplitConfig(Strict):
    """How interactions are divided into train / valid / test."""

    # auto: the dataset's own split where it ships one (UniSRec Amazon files), else leave-one-out.
    method: Literal["auto", "given", "leave_one_out", "temporal"] = "auto"
    # temporal only: the cut points, as fractions of the time range's interactions (quantiles of time).
    valid_quantile: float = Field(0.8, gt=0, lt=1)
    test_quantile: float = Field(0.9, gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> SplitConfig:
        if self.valid_quantile >= self.test_quantile:
            raise ValueError("valid_quantile must be below test_quantile")
        return self


class SyntheticConfig(Strict):
    """The embedded demo catalog (synthetic; see lmrec.data.synthetic)."""

    n_items: int = Field(600, ge=20)
    n_users: int = Field(800, ge=10)
    n_topics: int = Field(12, ge=2, le=16)  # 16 hand-written topic vocabularies
    events_per_user: int = Field(30, ge=5)
    drift: float = Field(0.15, ge=0, le=1)  # chance per step that a user's current topic changes
    seed: int = 0


class DataConfig(Strict):
    # A named dataset (see `lmrec datasets`), looked up under LMREC_DATA_DIR, or "demo" (synthetic, embedded).
    dataset: str | None = "demo"
    # Or a path plus its format; `dataset` is ignored when `path` is set.
    path: str | None = None
    format: (
        Literal[
            "movielens-100k",
            "movielens-csv",
            "movielens-dat",
            "recbole",
            "sequences",
            "amazon-json",
            "csv",
            "parquet",
        ]
        | None
    ) = None
    # Column mapping for csv/parquet: canonical name -> column in the file.
    columns: dict[str, str] = Field(default_factory=dict)
    # Items file for csv/parquet (item_id + text fields); optional.
    items_path: str | None = None
    # Item text template over the item table's fields; None = the format's default.
    text_template: str | None = None
    # k-core filtering: repeat until every user and item has at least this many interactions (0 = off).
    min_user_interactions: int = Field(0, ge=0)
    min_item_interactions: int = Field(0, ge=0)
    # Keep only interactions whose value is at least this (e.g. ratings >= 4 as positives); None keeps all.
    min_value: float | None = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    @model_validator(mode="after")
    def _source(self) -> DataConfig:
        if self.path is None and self.dataset is None:
            raise ValueError("set data.dataset (a named dataset) or data.path (+ data.format)")
        if self.path is not None and self.format is None:
            raise ValueError("data.path needs data.format (one of the listed formats)")
        return self


# ---------------------------------------------------------------------------------------------- model
# The LM layers fine-tuned when a config does not say: what Scientific's config of record, demo.yaml and
# local.yaml use (fine-tuning the top layer lost valid NDCG@10 on Scientific, tuning/variants-scientific.yaml;
# on ml-100k it won, 0.1069 against 0.1057 frozen, and ml-100k.yaml sets finetune_layers: 1).
FINETUNE_LAYERS = 0


class ItemTowerConfig(Strict):
    # text: the pretrained LM over item text (zero-shot for new items); id: learned ID embeddings only;
    # hybrid: text + ID embedding (ID part is zero for items unseen in training).
    kind: Literal["text", "id", "hybrid"] = "text"
    # "default" = the packaged all-MiniLM-L6-v2; or any local Hugging Face model directory or hub name.
    pretrained: str = "default"
    # Transformer layers fine-tuned, counted from the top: 0 = frozen LM (its item vectors are computed once
    # and cached), -1 = all layers.
    finetune_layers: int = Field(FINETUNE_LAYERS, ge=-1)
    max_text_length: int = Field(64, ge=8, le=512)  # 64 tokens cover 95% of Scientific item texts
    dim: int = Field(128, ge=8)  # embedding dimension after the projection
    # The map from the pooled LM vector to the item vector: linear, or moe (UniSRec's mixture of
    # `adaptor_experts` parametric-whitening experts behind a softmax gate).
    adaptor: Literal["linear", "moe"] = "linear"
    adaptor_experts: int = Field(8, ge=1)
    # hybrid: chance per training step that an item's ID part is dropped, so the text part learns to
    # stand alone (as it must for items unseen in training). 0 = off.
    id_dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("pretrained")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be 'default', a local model directory, or a Hugging Face model name")
        return v


class UserTowerConfig(Strict):
    # gru: the seed article's behaviour encoder; transformer: causal self-attention (SASRec-style);
    # text: the LM over the concatenated history text (BERT(d)·BERT(H)).
    kind: Literal["gru", "transformer", "text"] = "transformer"
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    max_history: int = Field(50, ge=1)
    max_text_length: int = Field(256, ge=8, le=512)  # text tower: tokens of concatenated history text
    event_embedding: bool = True  # add a learned embedding of the event type (view/click/purchase/rating)
    # transformer: feed-forward width = ffn_factor x dim; norm_first = pre-LN blocks (false = post-LN, as
    # the original SASRec and RecBole's)
    ffn_factor: int = Field(2, ge=1)
    norm_first: bool = True
    # transformer weights drawn from N(0, init_std) with zero biases (BERT's and RecBole's init, 0.02);
    # None = PyTorch's default init
    init_std: float | None = Field(None, gt=0)


class LossConfig(Strict):
    # sampled_softmax: in-batch + sampled negatives with logQ correction; softmax: full catalog;
    # bpr: pairwise; mse: the seed article's squared error on ratings.
    kind: Literal["sampled_softmax", "softmax", "bpr", "mse"] = "softmax"
    num_negatives: int = Field(256, ge=1)
    temperature: float = Field(0.05, gt=0)
    # score = cosine / temperature when true (text towers), raw dot product when false (ID SASRec)
    normalize: bool = True
    logq_correction: bool = True
    # hybrid: weight of a contrastive loss aligning each batch item's text vector with its ID vector
    # (in-batch InfoNCE, both ways, at `temperature`): behaviour teaches the text side. 0 = off.
    align_weight: float = Field(0.0, ge=0)
    # softmax, sequential user towers: each state also learns the `future_targets - 1` items after its
    # next one, the k-th weighted future_decay ** (k - 1) (PinnerFormer's dense all-action loss). 1 = off.
    future_targets: int = Field(1, ge=1)
    future_decay: float = Field(0.5, gt=0, le=1)


class ModelConfig(Strict):
    # Non-neural baselines are evaluated by the same evaluator: popularity, item-knn.
    kind: Literal["two-tower", "popularity", "item-knn"] = "two-tower"
    item_tower: ItemTowerConfig = Field(default_factory=ItemTowerConfig)
    user_tower: UserTowerConfig = Field(default_factory=UserTowerConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    knn_neighbours: int = Field(100, ge=1)  # item-knn: neighbours kept per item
    # Fusion at ranking time: score = model score + knn_weight * item-kNN score scaled to [0, 1] per
    # user (co-occurrence with the recent history; items without interactions read like their nearest
    # item by text). 0 = the model alone. On Scientific, 5 lifts test NDCG@10 from 0.081 to 0.098 (with the
    # history bias): the LM model and co-occurrence catch different items. Evaluation and serving alike.
    knn_weight: float = Field(0.0, ge=0)
    # The fusion's text transfer for items without interactions (new or held out): they take the mean
    # kNN similarities of their `knn_transfer_neighbours` nearest known items by text, each scaled by
    # cosine ** `knn_transfer_power` (0 neighbours = no transfer). `lmrec bench quality` picks the
    # variant on the cold-start protocol's valid split.
    knn_transfer_neighbours: int = Field(1, ge=0)
    knn_transfer_power: float = Field(1.0, gt=0)
    # A learned score offset for the items already in the user's history (its last user_tower.max_history
    # events), trained with the softmax: the model learns how likely users are to come back to an item
    # instead of ranking what they just bought first. Scientific's users almost never do (0.6% of test
    # targets): without it, the LM model's test NDCG@10 is 0.058 ranking every item, 0.073 with the history
    # left out of the ranking. Applies when history items are ranked (exclude_seen off).
    history_bias: bool = False
    # With history_bias and knn_weight: the kNN boost leaves the recent history's items alone (their score is
    # the model's, bias included) and is scaled by its largest boost among the other items. On Scientific
    # (frozen LM + history bias) the valid NDCG@10 fused at weights 2 / 3 / 4 / 5: 0.0865 / 0.0886 / 0.0882 /
    # 0.0875 with the boost on history items, 0.0935 / 0.0966 / 0.0981 / 0.0979 without.
    knn_skip_history: bool = True

    @model_validator(mode="after")
    def _history_bias(self) -> ModelConfig:
        if self.kind == "two-tower" and (self.history_bias or self.loss.future_targets > 1):
            key = "model.history_bias" if self.history_bias else "model.loss.future_targets"
            if self.loss.kind != "softmax" or self.user_tower.kind == "text":
                raise ValueError(f"{key} needs model.loss.kind=softmax and a sequential user tower (gru or transformer)")
        return self


# ---------------------------------------------------------------------------------------------- train
class TrainConfig(Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    lm_lr: float = Field(5e-5, gt=0)  # learning rate for the fine-tuned LM layers
    weight_decay: float = Field(0.0, ge=0)
    early_stopping_patience: int = Field(3, ge=0)  # epochs without valid NDCG@10 gain; 0 = off
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    mixed_precision: bool = True  # bf16/fp16 autocast, used only on GPU
    max_steps_per_epoch: int | None = Field(None, ge=1)  # cap for smoke runs
    seed: int = 0
    # A fine-tuned LM with a full softmax: every `lm_refresh_steps` steps (and at each epoch start) every
    # item's LM vector is recomputed without gradients; in between only the batch's items run the LM with
    # gradients and the others score with those vectors. 1 = exact scores, the LM's gradient through the
    # batch's items only (about half the time of 0 on Scientific); 0 = every item runs the LM with
    # gradients in every step. Refreshed only every 33 steps on Scientific, the model learned to tell
    # fresh vectors (the positives) from cached ones: valid NDCG@10 0.063 -> 0.046 in one epoch.
    lm_refresh_steps: int = Field(1, ge=0)
    # With a fine-tuned LM: first train with the LM frozen (cached vectors, fast) to early stopping (or half
    # the epochs, early stopping off), then unfreeze the top `finetune_layers` from its best weights
    # (linear probing then fine-tuning, Kumar et al. 2022: the new layers start from a head that already
    # fits instead of a random one). On ml-100k (with the history bias): valid NDCG@10 0.1057 frozen -> 0.1069.
    probe_first: bool = True
    # The learning rate of everything but the LM once its layers are released (None = train.lr): a fresh
    # optimizer at the probe's rate first shakes the head that already fits.
    finetune_lr: float | None = Field(None, gt=0)
    # A checkpoint directory whose weights start this run (same model shape and catalog; the optimizer
    # starts afresh). Its valid score is the one to beat: it is scored and saved as epoch 0 first.
    init_from: str | None = None
    # Per-epoch validation on a fixed random sample of this many valid users (early stopping and the best
    # epoch follow it); the best checkpoint is scored on every valid user at the end. None = every user.
    valid_users: int | None = Field(None, ge=1)
    # Batches of windows of similar length, each cut to its longest window: no attention over padding
    # (each target's loss weighted as in random batches). Pays where histories are mostly short and
    # a few long (Amazon); off, batches are drawn at random and cut to their longest window.
    bucket_by_length: bool = False


class EvalConfig(Strict):
    ks: list[int] = Field(default_factory=lambda: [10, 20, 50])
    exclude_seen: bool = False  # remove the user's history items from the ranking
    batch_size: int = Field(512, ge=1)

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("ks must be a non-empty list of positive integers")
        return sorted(set(v))


class Config(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    output_dir: str = "runs/latest"


# ------------------------------------------------------------------------------------------- loading
def data_dir() -> Path:
    """Where named datasets live: ``LMREC_DATA_DIR``, else ``../shared/data`` beside the project checkout."""
    env = os.environ.get("LMREC_DATA_DIR")
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").exists():
        return checkout.parent / "shared" / "data"
    return Path.cwd().parent / "shared" / "data"


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3). The value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override {item!r}: expected key.path=value, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad override {item!r}: value is not valid YAML ({exc})") from None
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
    return loaded


DATA_PATHS = ("path", "items_path")  # the data section's input paths


def expand_path(value: str, base: Path | None = None) -> str:
    """``~`` and ``$VARIABLES`` expanded (``$LMREC_DATA_DIR`` defaults to :func:`data_dir`), then a relative
    path made absolute from ``base`` (a YAML file's folder) when given."""
    env = {"LMREC_DATA_DIR": str(data_dir()), **os.environ}
    expanded = os.path.expanduser(_expand_vars(value, env))
    if base is not None and not os.path.isabs(expanded):
        expanded = str((base / expanded).resolve())
    return expanded


def _expand_vars(value: str, env: dict) -> str:
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m.group(1) or m.group(2), m.group(0)), value)


def _resolve_data_paths(loaded: dict, base: Path) -> dict:
    data = loaded.get("data")
    if isinstance(data, dict):
        for key in DATA_PATHS:
            if isinstance(data.get(key), str) and data[key]:
                data[key] = expand_path(data[key], base)
    return loaded


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key (check the spelling; print the valid keys with `lmrec config`)")
        else:
            lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_config(
    files: list[str | Path] | tuple = (),
    overrides: list[str] | tuple = (),
    base: dict | None = None,
) -> Config:
    """Build a validated :class:`Config` from defaults < ``base`` < YAML ``files`` < ``overrides``."""
    merged: dict = dict(base or {})
    sources = ["defaults"]
    for f in files:
        merged = _merge(merged, _resolve_data_paths(read_yaml(f), Path(f).parent.resolve()))
        sources.append(str(f))
    for item in overrides:
        path, value = parse_override(item)
        if path[:1] == ["data"] and len(path) == 2 and path[1] in DATA_PATHS and isinstance(value, str) and value:
            value = expand_path(value, Path.cwd())
        merged = _merge(merged, _nest(path, value))
    if overrides:
        sources.append("--set")
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, " < ".join(sources))) from None


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
