"""Off-policy evaluation of a candidate before it is rolled out (``lmrec ope``): replay the candidate's ranking
core on each logged recommendation's context and hand its pools to the estimators (:mod:`lmrec.loop.ope`).

A logged recommendation's context is the user's history as it was when the slate was served (every event
before that time, from the collected ``events.parquet``; for related items, the one item) and the items that
existed then (items first posted later are left out). The candidate is an artifact (a new model, ranking with
the logging service's policy or one given) or a ranking config (a new policy or rules on the logging model).
Only the candidate's *pool* is computed here: which slate it would draw, and with what probabilities, is the
estimators' business.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lmrec.errors import DataError, LmrecError
from lmrec.loop.logs import RewardConfig, read_logs
from lmrec.loop.ope import CandidatePool, evaluate
from lmrec.loop.policies import ExplorationPolicy
from lmrec.ranking.config import RankingConfig
from lmrec.ranking.local import build_local
from lmrec.ranking.records import Query, UserContext
from lmrec.store import StoreConfig

log = logging.getLogger(__name__)


def load_candidate(policy: str | Path, artifact: str | Path | None) -> tuple[Path, RankingConfig]:
    """``policy``: an artifact directory (the candidate model, ranking greedily) or a YAML ranking config (a
    RankingConfig, or just a policy such as ``{kind: epsilon, epsilon: 0.1}``) on ``artifact`` (the logging
    model, or another one)."""
    path = Path(policy)
    if path.is_dir():
        return path, RankingConfig()
    if not path.is_file():
        raise LmrecError(f"--policy {policy}: neither an artifact directory nor a YAML file")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LmrecError(f"--policy {policy}: not YAML ({str(exc).splitlines()[0]})") from None
    config = RankingConfig.model_validate({"policy": spec} if isinstance(spec, dict) and "kind" in spec else spec)
    if artifact is None:
        raise LmrecError(f"--policy {policy} is a ranking config: give the model it ranks with as --artifact DIR")
    return Path(artifact), config


def candidate_pools(data_dir: Path, logged, artifact: Path, config: RankingConfig, batch: int = 256) -> dict[str, CandidatePool]:
    """The candidate's re-ranked pool for every logged recommendation (greedy order, ``config.pool`` deep)."""
    events = pd.read_parquet(data_dir / "events.parquet", columns=["user_id", "item_id", "timestamp", "event"])
    events = events.sort_values("timestamp", kind="stable")
    by_user = {u: (g["timestamp"].to_numpy(), list(zip(g["item_id"].astype(str), g["event"]))) for u, g in events.groupby("user_id", sort=False)}
    created = _first_seen(data_dir)
    slates = logged.impressions.drop_duplicates("recommendation_id")[["recommendation_id", "user_id", "context_item_id", "time"]]
    with tempfile.TemporaryDirectory() as tmp:  # the candidate ranks from histories given here, not a store's
        local = build_local(artifact, StoreConfig(str(Path(tmp) / "replay.sqlite")),
                            config=config.model_copy(update={"policy": {"kind": "greedy"}, "experiment": None}))
        try:
            out: dict[str, CandidatePool] = {}
            rows = list(slates.itertuples(index=False))
            for start in range(0, len(rows), batch):
                chunk = rows[start:start + batch]
                histories = []
                for _rec, user, item, t in chunk:
                    if isinstance(item, str):
                        histories.append(((item, "view"),))
                    else:
                        times, hist = by_user.get(user, (np.zeros(0), []))
                        histories.append(tuple(hist[:int(np.searchsorted(times, t, side="left"))])[-local.users.max_history:])
                known = [j for j, h in enumerate(histories) if h]
                vectors = dict(zip(known, local.encoder.user_vectors([histories[j] for j in known]).vectors)) if known else {}
                requests = []
                for j, (_rec, user, item, t) in enumerate(chunk):
                    later = tuple(i for i, c in created.items() if c > t)  # not posted yet when it was served
                    q = Query(config.pool, user_id=None if isinstance(item, str) else user, item_id=item if isinstance(item, str) else None,
                              deny=later or None)
                    requests.append((q, UserContext(user, 0, histories[j], vectors.get(j), local.model.model_version)))
                for (rec, *_), ranked in zip(chunk, local.retriever.rank(requests)):
                    if isinstance(ranked, Exception):
                        raise DataError(f"replaying recommendation {rec!r}: {ranked}")
                    out[rec] = CandidatePool([i.item_id for i in ranked.items], np.array([i.score for i in ranked.items]))
            return out
        finally:
            local.close()


def _first_seen(data_dir: Path) -> dict[str, float]:
    """When each posted item first existed (items.parquet's ``created``; catalog items: always)."""
    items = data_dir / "items.parquet"
    if not items.is_file():
        return {}
    frame = pd.read_parquet(items)
    if "created" not in frame:
        return {}
    frame = frame[frame["created"].notna()]
    return dict(zip(frame["item_id"].astype(str), frame["created"].astype(float)))


def run_ope(data_dir: str | Path, policy: str | Path, artifact: str | Path | None = None, reward: dict | None = None,
            estimators: tuple[str, ...] = ("ips", "snips", "dm", "dr", "iips", "rips"), n_bootstrap: int = 1000,
            surface: str = "recommend") -> dict:
    """Estimate the candidate's value from ``data_dir`` (``lmrec collect``'s output: ``logs/`` and the events);
    a report with every estimator's estimate and 95% interval, or why it refused."""
    data_dir = Path(data_dir)
    if not (data_dir / "logs" / "impressions").is_dir():
        raise LmrecError(f"--data {data_dir}: no logs/impressions/ (run `lmrec collect` on the service's store first)")
    started = time.perf_counter()
    logged = read_logs(data_dir / "logs", RewardConfig(**(reward or {})))
    keep = logged.impressions["surface"] == surface
    if not keep.any():
        raise LmrecError(f"the logs hold no {surface} impressions")
    logged = type(logged)(logged.impressions[keep].reset_index(drop=True), logged.unattributed)
    logged.impressions["slate"] = pd.factorize(logged.impressions["recommendation_id"])[0]
    model_dir, config = load_candidate(policy, artifact)
    pools = candidate_pools(data_dir, logged, model_dir, config)
    report = evaluate(logged, pools, ExplorationPolicy(config.policy), estimators, n_bootstrap=n_bootstrap)
    loggers = logged.impressions.groupby("policy")["recommendation_id"].nunique().to_dict()
    return {"candidate": {"artifact": str(model_dir), "ranking": json.loads(config.model_dump_json())},
            "logs": {"data": str(data_dir), "recommendations": report.recommendations, "slots": report.slots,
                     "loggers": {str(k): int(v) for k, v in loggers.items()}, "unattributed": logged.unattributed},
            "report": report.as_dict(), "seconds": round(time.perf_counter() - started, 1)}
