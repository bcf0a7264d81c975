"""``lmrec bench retrieval``: exact vs FAISS (HNSW) candidate retrieval on a synthetic catalog, through the
serving ``ItemIndex`` API. Writes ``retrieval.json`` and ``retrieval.png``.

The catalog is clustered Gaussian vectors (``clusters`` random unit centres, each item a centre plus noise,
normalised), the queries are drawn the same way — near clusters, as user vectors are near the items they
like. Per backend: build time, resident memory added by the build, single-query and batch latency; for
FAISS, recall@k against exact search, at the configured ``ef_search`` and over a sweep of it.

Then the same with fusion with item-kNN as serving runs it (``KnnFusion``: each query's history of
``history`` random items, ``knn_neighbours`` random neighbours per item, the boosts computed and added in the
search): its latency per query and, for FAISS, recall@k of the fused ranking against exact fused search.
"""

from __future__ import annotations

import os
import platform as _platform
import time
from pathlib import Path

import numpy as np

from lmrec.errors import LmrecError
from lmrec.ranking.fusion import KnnFusion
from lmrec.ranking.index import IndexConfig, ItemIndex

TARGET_P99_MS = 10.0
TARGET_RECALL = 0.95
NOISE = 0.6  # noise norm relative to the unit centre: items of a cluster at cosine ~0.85 to its centre
EXACT_SINGLE_MAX = 200  # exact single queries timed at most (each is a full scan of the catalog)


def synthetic_catalog(items: int, dim: int, clusters: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(items, dim) and (queries, dim) float32 unit vectors around shared random cluster centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n: int) -> np.ndarray:
        out = np.empty((n, dim), dtype=np.float32)
        for start in range(0, n, 100_000):  # chunks: no float64 copy of the whole catalog
            m = min(n, start + 100_000) - start
            x = centres[rng.integers(0, clusters, m)] + (NOISE / np.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
            out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(items), draw(queries)


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def _percentiles(seconds: list[float], per: int = 1) -> dict:
    ms = np.asarray(seconds) * 1000 / per
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "n": len(ms)}


def _time_single(index: ItemIndex, queries: np.ndarray, k: int) -> tuple[dict, list]:
    for q in queries[:5]:  # warm-up: threads, caches, the scratch buffer
        index.search(q[None], k)
    seconds, results = [], []
    for q in queries:
        started = time.perf_counter()
        results.append(index.search(q[None], k)[0])
        seconds.append(time.perf_counter() - started)
    return _percentiles(seconds), results


def _time_batches(index: ItemIndex, queries: np.ndarray, k: int, batch: int) -> tuple[dict, list]:
    seconds, results = [], []
    index.search(queries[:batch], k)
    for start in range(0, len(queries) - batch + 1, batch):
        started = time.perf_counter()
        results += index.search(queries[start:start + batch], k)
        seconds.append(time.perf_counter() - started)
    return {"per_batch": _percentiles(seconds), "per_query": _percentiles(seconds, batch), "batch": batch}, results


def synthetic_knn(items: int, neighbours: int, seed: int = 0):
    """An item-kNN model over ``items`` positions, ``neighbours`` random neighbours per item, similarities in
    [0, 1): the shape of a fitted one (its cost, not its quality)."""
    import scipy.sparse as sp

    from lmrec.baselines import ItemKNN

    rng = np.random.default_rng(seed)
    indices = rng.integers(0, items, items * neighbours, dtype=np.int32)
    indptr = np.arange(0, items * neighbours + 1, neighbours, dtype=np.int64)
    return ItemKNN.from_similarity(sp.csr_matrix((rng.random(items * neighbours, dtype=np.float32), indices, indptr),
                                                 shape=(items, items)))


def _time_fused(index: ItemIndex, fusion: KnnFusion, queries: np.ndarray, histories: list, k: int, batch: int) -> tuple[dict, list]:
    """Per query (boosts + search, one at a time) and per batch (boosts and search for ``batch`` together)."""
    def run(start: int, end: int):
        return index.search(queries[start:end], k, boost=fusion.boosts(histories[start:end]))

    run(0, 1)
    single, results = [], []
    for j in range(len(queries)):
        started = time.perf_counter()
        results += run(j, j + 1)
        single.append(time.perf_counter() - started)
    batched = []
    for start in range(0, len(queries) - batch + 1, batch):
        started = time.perf_counter()
        run(start, start + batch)
        batched.append(time.perf_counter() - started)
    return {"single": _percentiles(single), "batch": {"per_query": _percentiles(batched, batch), "batch": batch}}, results


def _recall(got: list, truth: list, k: int) -> float:
    return round(float(np.mean([len({i for i, _ in g} & {i for i, _ in t}) / k for g, t in zip(got, truth)])), 4)


def _build(config: IndexConfig, ids: list[str], vectors: np.ndarray) -> tuple[ItemIndex, dict]:
    rss = _rss_mb()
    started = time.perf_counter()
    index = ItemIndex.build(ids, vectors, None, config)
    seconds = time.perf_counter() - started
    after = _rss_mb()
    return index, {"build_s": round(seconds, 2), "rss_added_mb": round(after - rss, 1) if rss and after else None,
                   "vector_mb": round(vectors.nbytes / 2**20, 1)}


def run_retrieval(
    out: str | Path = "reports/retrieval",
    items: int = 1_000_000,
    dim: int = 128,
    clusters: int = 1000,
    queries: int = 1000,
    k: int = 100,
    batch: int = 32,
    threads: int | None = None,
    sweep: tuple[int, ...] = (128, 192, 256, 384, 512),
    config: IndexConfig | None = None,
    seed: int = 0,
    knn_neighbours: int = 100,
    history: int = 50,
) -> dict:
    from lmrec.reports import write_json

    for name, value in (("items", items), ("dim", dim), ("clusters", clusters), ("queries", queries), ("k", k), ("batch", batch)):
        if value < 1:
            raise LmrecError(f"--{name} must be at least 1, got {value}")
    if k > items or batch > queries:
        raise LmrecError(f"need k <= items and batch <= queries, got k={k}, items={items}, batch={batch}, queries={queries}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = threads or os.cpu_count() or 1
    # subset_max=0: time the graph search itself, also on a smoke-sized catalog (serving scores <= 16k exactly)
    base = (config or IndexConfig()).model_copy(update={"threads": threads, "subset_max": 0})
    report: dict = {
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "threads": threads, "python": _platform.python_version(),
                    "load_avg_1m_start": round(os.getloadavg()[0], 2)},
        "catalog": {"items": items, "dim": dim, "clusters": clusters, "queries": queries, "k": k, "batch": batch,
                    "seed": seed, "noise": NOISE},
        "fusion": {"knn_neighbours": knn_neighbours, "history": history, "weight": 1.0},
        "targets": {"p99_ms_per_query": TARGET_P99_MS, f"recall@{k}": TARGET_RECALL},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    vectors, q = synthetic_catalog(items, dim, clusters, queries, seed)
    ids = [f"item{i}" for i in range(items)]

    exact, report["exact"] = _build(base.model_copy(update={"backend": "exact"}), ids, vectors)
    report["exact"]["single"], _ = _time_single(exact, q[:EXACT_SINGLE_MAX], k)
    report["exact"]["batch"], truth = _time_batches(exact, q, k, batch)
    truth += exact.search(q[len(truth):], k) if len(truth) < len(q) else []
    fusion = KnnFusion(synthetic_knn(items, knn_neighbours, seed), ids, weight=1.0, temperature=1.0)
    rng = np.random.default_rng(seed + 1)
    histories = [[ids[j] for j in rng.integers(0, items, history)] for _ in range(len(q))]
    exact.set_keys(ids)
    nq = min(len(q), EXACT_SINGLE_MAX)
    report["exact"]["fused"], fused_truth = _time_fused(exact, fusion, q[:nq], histories[:nq], k, min(batch, nq))
    del exact  # its copy of the vectors; FAISS keeps its own

    index, report["faiss"] = _build(base.model_copy(update={"backend": "faiss"}), ids, vectors)
    report["faiss"]["config"] = index.config.model_dump()
    report["faiss"]["single"], got = _time_single(index, q, k)
    report["faiss"][f"recall@{k}"] = _recall(got, truth, k)
    report["faiss"]["batch"], got_batch = _time_batches(index, q, k, batch)
    report["faiss"][f"recall@{k}_batch"] = _recall(got_batch, truth, k)
    report["faiss"]["sweep"] = []
    for ef in sweep:
        index.config = base.model_copy(update={"backend": "faiss", "ef_search": ef})
        timing, got = _time_single(index, q, k)
        report["faiss"]["sweep"].append({"ef_search": ef, f"recall@{k}": _recall(got, truth, k), **timing})
    index.config = base.model_copy(update={"backend": "faiss"})
    index.set_keys(ids)
    report["faiss"]["fused"], got = _time_fused(index, fusion, q[:nq], histories[:nq], k, min(batch, nq))
    report["faiss"]["fused"][f"recall@{k}"] = _recall(got, fused_truth, k)

    f = report["faiss"]
    report["pass"] = {"p99_single": f["single"]["p99_ms"] <= TARGET_P99_MS,
                      "p99_batch_per_query": f["batch"]["per_query"]["p99_ms"] <= TARGET_P99_MS,
                      f"recall@{k}": f[f"recall@{k}"] >= TARGET_RECALL}
    report["machine"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(out / "retrieval.json", report)
    plot(report, out / "retrieval.png")
    return report


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return _platform.processor() or "unknown"


def summary(report: dict) -> str:
    c, k = report["catalog"], report["catalog"]["k"]
    lines = [f"catalog {c['items']:,} x {c['dim']}, {c['queries']} queries, k={k}, "
             f"{report['machine']['threads']} threads on {report['machine']['cores']} cores ({report['machine']['cpu']})",
             f"{'backend':8s} {'build s':>8s} {'+RSS MB':>8s} {'1q p50':>8s} {'1q p99':>8s} {'b/q p50':>8s} {'b/q p99':>8s} {'recall':>7s}"]
    for name in ("exact", "faiss"):
        r = report[name]
        lines.append(f"{name:8s} {r['build_s']:8.1f} {r['rss_added_mb'] or 0:8.0f} {r['single']['p50_ms']:8.2f} "
                     f"{r['single']['p99_ms']:8.2f} {r['batch']['per_query']['p50_ms']:8.2f} "
                     f"{r['batch']['per_query']['p99_ms']:8.2f} {r.get(f'recall@{k}', 1.0):7.3f}")
    fu = report["fusion"]
    for name in ("exact", "faiss"):
        r = report[name]["fused"]
        lines.append(f"{name + '+knn':8s} {'':8s} {'':8s} {r['single']['p50_ms']:8.2f} {r['single']['p99_ms']:8.2f} "
                     f"{r['batch']['per_query']['p50_ms']:8.2f} {r['batch']['per_query']['p99_ms']:8.2f} {r.get(f'recall@{k}', 1.0):7.3f}")
    lines.append(f"latency in ms per query; b/q = batch of {c['batch']}, per query; +knn = fused with item-kNN "
                 f"({fu['history']} history items x {fu['knn_neighbours']} neighbours, recall against exact fused search). "
                 f"targets: p99 <= {TARGET_P99_MS:.0f} ms, recall@{k} >= {TARGET_RECALL:.2f} -> {report['pass']}")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = report["catalog"]["k"]
    fig, (lat, rec) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = ["single p50", "single p99", "batch p50 /q", "batch p99 /q"]
    x = np.arange(len(labels))
    for offset, name in ((-0.2, "exact"), (0.2, "faiss")):
        r = report[name]
        values = [r["single"]["p50_ms"], r["single"]["p99_ms"], r["batch"]["per_query"]["p50_ms"], r["batch"]["per_query"]["p99_ms"]]
        lat.bar(x + offset, values, width=0.4, label=f"{name} (build {r['build_s']:.0f} s)")
    lat.axhline(TARGET_P99_MS, color="red", linestyle="--", linewidth=1, label="p99 target")
    lat.set_xticks(x, labels)
    lat.set_yscale("log")
    lat.set_ylabel("ms per query")
    lat.set_title(f"{report['catalog']['items']:,} items x {report['catalog']['dim']}, {report['machine']['threads']} threads")
    lat.legend(fontsize=8)
    sweep = report["faiss"]["sweep"]
    rec.plot([s["p99_ms"] for s in sweep], [s[f"recall@{k}"] for s in sweep], marker="o")
    for s in sweep:
        rec.annotate(f"ef {s['ef_search']}", (s["p99_ms"], s[f"recall@{k}"]), fontsize=8)
    rec.axhline(TARGET_RECALL, color="red", linestyle="--", linewidth=1)
    rec.axvline(TARGET_P99_MS, color="red", linestyle="--", linewidth=1)
    rec.set_xlabel("single-query p99 (ms)")
    rec.set_ylabel(f"recall@{k} vs exact")
    rec.set_title("FAISS HNSW: efSearch sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
