"""ANN benchmark: vidrec's Faiss index kinds side by side with exact search and ScaNN.

Data, synthetic by default: a mixture of anisotropic Gaussian clusters with Zipf-skewed sizes
(popular topics hold most videos), L2-normalised; queries come from the same mixture but are held
out (one set tunes, another set is measured). With ``--embeddings PATH.npz`` the catalogue and
queries are a trained model's instead: ``embeddings`` ``[n, d] float32`` (unit-norm video
vectors), ``ids`` ``[n] int64``, ``tuning_queries`` and ``queries`` ``[q, d] float32`` (held-out
user-tower outputs), as ``vidrec export-embeddings --bundle ID --out FILE.npz`` writes them;
``--sizes`` is then ignored. A trained user tower's queries sit apart from the
videos (a narrow cone), which synthetic same-distribution queries never show; the report gives
their shift from the videos' distribution and whether vidrec's HNSW graph went query-aware.

Every method is tuned to the same recall@100 target on the tuning queries, then measured on the
evaluation queries: recall@10/100 against exact search, single-query p50/p99 (one thread), batch
throughput (all cores), build time and peak memory. Each method runs in its own process so its
peak memory is its own.

    python benchmarks/ann.py --sizes 100000            # quick
    python benchmarks/ann.py --sizes 100000 1000000    # the full table
    vidrec export-embeddings --bundle ID --data DATA --out artifacts/trained.npz
    python benchmarks/ann.py --embeddings artifacts/trained.npz --out artifacts/bench/ann-trained

Writes ``results.json``, ``results.md`` and ``recall_latency.png`` under ``--out``. The process
never imports TensorFlow: ScaNN's package ``__init__`` tries to load its TF op, so
``sys.modules["tensorflow"] = None`` makes it fall back to the pure pybind API.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# "auto" is what a bundle build does: every kind of index.candidate_kinds built and tuned, the
# fastest single query at the recall target kept (so its build time is theirs summed).
METHODS = ("exact", "hnsw", "hnsw_sq", "ivf_sq", "ivf_hnsw_pq", "auto", "scann")
FAISS_KINDS = ("hnsw", "hnsw_sq", "ivf_sq", "ivf_hnsw_pq", "auto")
K = 100


def block_tensorflow() -> None:
    """Makes ``import tensorflow`` fail fast in this process (ScaNN then uses pybind only)."""
    sys.modules["tensorflow"] = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------- data


def clustered_embeddings(
    n: int, dim: int, clusters: int, seed: int, *, zipf: float = 0.9, spread: float = 0.35
) -> np.ndarray:
    """``[n, dim] float32`` unit vectors from a skewed mixture of anisotropic Gaussians.

    Cluster sizes follow a Zipf law with exponent ``zipf``; each cluster has its own decaying
    spectrum of axis scales (random order of axes) and one of 16 random rotations.
    """
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, clusters + 1) ** zipf
    weights = rng.permutation(weights / weights.sum())
    assign = rng.choice(clusters, size=n, p=weights)
    decay = np.exp(-np.arange(dim) / (dim / 3.0)).astype(np.float32)
    scales = np.stack([rng.permutation(decay) for _ in range(clusters)])
    scales *= (spread * rng.uniform(0.3, 1.0, (clusters, 1))).astype(np.float32)
    rotations = [
        np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32) for _ in range(16)
    ]
    rotation_of = rng.integers(0, len(rotations), clusters)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        a = assign[s : s + 100_000]
        z = rng.standard_normal((len(a), dim)).astype(np.float32) * scales[a]
        block = np.empty_like(z)
        for r, rot in enumerate(rotations):
            rows = rotation_of[a] == r
            block[rows] = z[rows] @ rot
        block += centers[a]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[s : s + 100_000] = block
    return out


def prepare(size: int, args: argparse.Namespace, cache: Path) -> None:
    """Generates the catalogue and both query sets, and the exact top-100 of each query set."""
    if (cache / "done").exists():
        return
    started = time.perf_counter()
    nq = args.tuning_queries + args.queries
    x = clustered_embeddings(
        size + nq, args.dim, args.clusters, args.seed, zipf=args.zipf, spread=args.spread
    )
    rng = np.random.default_rng(args.seed + 1)
    held_out = rng.choice(size + nq, size=nq, replace=False)
    mask = np.zeros(size + nq, dtype=bool)
    mask[held_out] = True
    catalogue, queries = x[~mask], x[mask]
    ids = rng.permutation(np.arange(size, dtype=np.int64) * 3 + 17)  # not positions
    tune_q, eval_q = queries[: args.tuning_queries], queries[args.tuning_queries :]
    save_dataset(cache, catalogue, ids, tune_q, eval_q)
    print(
        f"[data] {size} videos x {args.dim}: generated + exact top-{K} in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )


TRAINED_ARRAYS = ("embeddings", "ids", "tuning_queries", "queries")


def load_trained(
    path: Path, tuning_queries: int | None, queries: int | None
) -> dict[str, np.ndarray]:
    """Reads and checks a trained model's embeddings (the ``--embeddings`` file).

    Args:
        path: ``.npz`` with the arrays named in `TRAINED_ARRAYS` (see the module doc).
        tuning_queries: Keep only the first this many tuning queries (``None``: all).
        queries: Keep only the first this many evaluation queries (``None``: all).

    Raises:
        ValueError: A missing array, wrong shapes or dtypes, non-unit vectors, duplicate ids.
    """
    with np.load(path) as npz:
        missing = [name for name in TRAINED_ARRAYS if name not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing} (holds {sorted(npz.files)})")
        data = {name: npz[name] for name in TRAINED_ARRAYS}
    x, ids = data["embeddings"], data["ids"]
    if x.ndim != 2 or x.dtype != np.float32 or len(x) == 0:
        raise ValueError(f"{path}: embeddings must be [n, d] float32, got {x.shape} {x.dtype}")
    if ids.shape != (len(x),) or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{path}: ids must be [{len(x)}] integers, got {ids.shape} {ids.dtype}")
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{path}: ids are not unique")
    for name, limit in (("tuning_queries", tuning_queries), ("queries", queries)):
        q = data[name]
        if q.ndim != 2 or q.shape[1] != x.shape[1] or q.dtype != np.float32 or len(q) == 0:
            raise ValueError(
                f"{path}: {name} must be [q, {x.shape[1]}] float32, got {q.shape} {q.dtype}"
            )
        data[name] = q[:limit] if limit is not None else q
    # The methods disagree on vectors that are not unit-norm (vidrec normalises, ScaNN and the
    # ground truth do not), so the file must hold what the model serves: unit vectors.
    for name in ("embeddings", "tuning_queries", "queries"):
        norms = np.linalg.norm(data[name], axis=1)
        if float(np.max(np.abs(norms - 1.0))) > 1e-3:
            raise ValueError(
                f"{path}: {name} are not unit-norm (norms {norms.min():.4g}..{norms.max():.4g})"
            )
    data["ids"] = ids.astype(np.int64, copy=False)
    return data


def prepare_trained(path: Path, args: argparse.Namespace, cache: Path) -> None:
    """Takes the catalogue and both query sets from ``path``, and the exact top-100 of each."""
    if (cache / "done").exists():
        return
    started = time.perf_counter()
    data = load_trained(path, args.tuning_queries, args.queries)
    n, dim = data["embeddings"].shape
    save_dataset(cache, data["embeddings"], data["ids"], data["tuning_queries"], data["queries"])
    print(
        f"[data] {n} trained-model videos x {dim} from {path}, "
        f"{len(data['tuning_queries'])} + {len(data['queries'])} queries: exact top-{K} in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )


def trained_tag(path: Path, args: argparse.Namespace) -> str:
    """Cache directory name of an embeddings file: changes when the file or the query caps do."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{args.tuning_queries}:{args.queries}"
    return f"trained-{path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def query_shift(catalogue: np.ndarray, queries: np.ndarray, seed: int = 0) -> float:
    """``|C_q - C_x|_F / |C_x|_F`` over second moments, as `VideoIndex` measures it.

    About 0.2 for queries distributed like the videos; vidrec builds its HNSW graph in
    query-fitted coordinates from ``index.query_aware_min_shift`` (1.0) up.
    """
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(catalogue), size=min(len(catalogue), 100_000), replace=False)
    x = catalogue[np.sort(rows)].astype(np.float64)
    q = queries.astype(np.float64)
    videos_moment = x.T @ x / len(x)
    return float(np.linalg.norm(q.T @ q / len(q) - videos_moment) / np.linalg.norm(videos_moment))


def save_dataset(
    cache: Path, catalogue: np.ndarray, ids: np.ndarray, tune_q: np.ndarray, eval_q: np.ndarray
) -> None:
    """Writes the arrays the workers load, the exact top-100 of both query sets, and stats."""
    from index.tuning import exact_search

    cache.mkdir(parents=True, exist_ok=True)
    size = len(catalogue)
    chunks = [(catalogue[s : s + 200_000], ids[s : s + 200_000]) for s in range(0, size, 200_000)]
    _, gt_tune = exact_search(tune_q, chunks, K)
    scores_eval, gt_eval = exact_search(eval_q, chunks, K)
    stats: dict[str, float] = {  # how hard the data is: similarity of the 1st/10th/100th neighbour
        f"median_cos_at_{r}": round(float(np.median(scores_eval[:, r - 1])), 4)
        for r in (1, 10, 100)
    }
    # How far the queries sit from the videos: the shift vidrec's HNSW build measures, and the
    # norm of the mean direction (0 for directions spread evenly, 1 for a single direction).
    stats["query_shift"] = round(query_shift(catalogue, tune_q), 3)
    stats["query_mean_norm"] = round(float(np.linalg.norm(eval_q.mean(axis=0))), 3)
    stats["video_mean_norm"] = round(float(np.linalg.norm(catalogue.mean(axis=0))), 3)
    stats["n"], stats["dim"] = size, catalogue.shape[1]
    stats["tuning_queries"], stats["queries"] = len(tune_q), len(eval_q)
    (cache / "stats.json").write_text(json.dumps(stats))
    for name, arr in (
        ("x", catalogue),
        ("ids", ids),
        ("tune_q", tune_q),
        ("eval_q", eval_q),
        ("gt_tune", gt_tune),
        ("gt_eval", gt_eval),
    ):
        np.save(cache / f"{name}.npy", arr)
    (cache / "done").write_text("ok")


# ---------------------------------------------------------------------------------- measuring


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def single_latency(
    search_one: Callable[[np.ndarray], object], queries: np.ndarray, count: int
) -> dict[str, float]:
    """p50/p99 in ms of ``count`` one-query calls, after a warm-up."""
    from index.tuning import latency_profile

    out = latency_profile(search_one, queries, count, warmup=50)
    return {"p50_ms": round(out["p50_ms"], 4), "p99_ms": round(out["p99_ms"], 4)}


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    from index.tuning import recall_at_k

    return round(recall_at_k(found, truth, k), 5)


def tail(found: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """How bad the worst queries are: 1st-percentile recall@100 and the share below 0.5."""
    from index.tuning import per_query_recall

    per_query = per_query_recall(found, truth, K)
    return {
        "p1_query_recall_at_100": round(float(np.quantile(per_query, 0.01)), 3),
        "failed_queries": round(float(np.mean(per_query < 0.5)), 4),
    }


def load(cache: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in cache.glob("*.npy")}


# ---------------------------------------------------------------------------------- workers


def run_faiss(kind: str, cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Builds, tunes and measures one `VideoIndex` kind (``exact`` is the ``flat`` kind)."""
    from core.config import IndexConfig
    from index import OperatingPoint, VideoIndex

    d = load(cache)
    base_rss = rss_mb()
    cfg = IndexConfig(
        kind="flat" if kind == "exact" else kind,
        flat_max_videos=min(IndexConfig().flat_max_videos, len(d["x"]) - 1),
        target_recall=args.target_recall,
        recall_k=K,
        tuning_queries=len(d["tune_q"]),
        latency_queries=200,
        memory_budget_mb=16_384,
    )
    started = time.perf_counter()
    index = VideoIndex.build(d["x"], d["ids"], cfg, tuning_queries=d["tune_q"])
    total = time.perf_counter() - started
    peak = peak_rss_mb()
    report = index.report
    eval_q, gt = d["eval_q"], d["gt_eval"]
    _, found = index.search(eval_q, K)
    _, found10 = index.search(eval_q, 10)
    latency = single_latency(lambda q: index.search(q, K), eval_q, args.latency_queries)
    index.search(eval_q[:100], K)
    t0 = time.perf_counter()
    index.search(eval_q, K)
    qps = len(eval_q) / (time.perf_counter() - t0)

    sweep = []
    chosen = index.operating_point
    if index.kind == "hnsw":
        points = [OperatingPoint(ef_search=ef) for ef in (100, 128, 160, 192, 256, 384, 512)]
    elif index.kind == "hnsw_sq":
        points = [
            OperatingPoint(ef_search=ef, k_factor=f)
            for f in (1.0, 1.5, 2.0)
            for ef in (100, 128, 160, 192, 256, 384)
            if ef >= 100 * f
        ]
    elif index.kind == "ivf_sq":
        points = [
            OperatingPoint(nprobe=p, k_factor=f)
            for f in (1.0, 1.5, 2.0, 4.0)
            for p in (8, 12, 16, 24, 32, 48, 64)
            if p <= index.layout.nlist
        ]
    elif index.kind == "ivf_hnsw_pq":
        points = [
            OperatingPoint(nprobe=p, quantizer_ef_search=2 * p, k_factor=f)
            for f in (4.0, 8.0, 16.0, 32.0)
            for p in (8, 16, 32, 64, 128)
            if p <= index.layout.nlist
        ]
    else:
        points = []
    if kind == "auto":
        points = []  # the chosen kind's own row has the sweep
    for point in points:
        index.set_operating_point(point)
        _, f = index.search(eval_q, K)
        lat = single_latency(lambda q: index.search(q, K), eval_q, 200)
        sweep.append(
            {"params": point.to_dict(), "recall_at_100": recall(f, gt, K), **tail(f, gt), **lat}
        )
    index.set_operating_point(chosen)

    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        t0 = time.perf_counter()
        index.save(tmp)
        save_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
        t0 = time.perf_counter()
        VideoIndex.load(tmp, expected_dim=index.dim)
        load_s = time.perf_counter() - t0
    return {
        "method": kind,
        "kind": index.kind,
        "kind_selection": report["build"].get("kind_selection"),
        "factory": index.factory,
        "query_aware": index.query_aware,
        "operating_point": chosen.to_dict(),
        # auto: every candidate's build and tuning (what a bundle build spends), not the kept one's.
        "build_seconds": round(total, 2) if kind == "auto" else report["build"]["build_seconds"],
        "tune_seconds": None if kind == "auto" else report["build"].get("tune_seconds"),
        "total_seconds": round(total, 2),
        "peak_rss_mb": round(peak, 1),
        "peak_over_data_mb": round(peak - base_rss, 1),
        "tuning_recall_at_100": report["recall"]["at_k"],
        "recall_at_10": recall(found10, gt, 10),
        "recall_at_100": recall(found, gt, K),
        **tail(found, gt),
        **latency,
        "batch_qps": round(qps, 1),
        "saved_mb": round(size_mb, 1),
        "save_seconds": round(save_s, 2),
        "load_seconds": round(load_s, 2),
        "sweep": sweep,
    }


def run_scann(cache: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Builds ScaNN (tree + asymmetric hashing + reorder), tunes it to the same target, measures."""
    block_tensorflow()
    from scann.scann_ops.py import scann_ops_pybind

    from core.config import IndexConfig
    from index.tuning import per_query_recall

    cfg = IndexConfig()  # the same margin and failed-query limit the Faiss index is tuned with
    z, floor, max_failed = cfg.recall_confidence_z, cfg.query_recall_floor, cfg.max_failed_queries

    d = load(cache)
    x, ids = d["x"], d["ids"]
    base_rss = rss_mb()
    n = len(x)
    leaves = max(16, round(2 * math.sqrt(n)))
    started = time.perf_counter()
    searcher = (
        scann_ops_pybind.builder(x, K, "dot_product")
        .tree(
            num_leaves=leaves,
            num_leaves_to_search=max(1, leaves // 20),
            training_sample_size=min(n, 250_000),
        )
        .score_ah(2, anisotropic_quantization_threshold=0.2)
        .reorder(4 * K)
        .build()
    )
    build_s = time.perf_counter() - started
    peak = peak_rss_mb()

    def run(q: np.ndarray, k: int, reorder: int, lts: int) -> np.ndarray:
        rows, _ = searcher.search_batched(
            q, final_num_neighbors=k, pre_reorder_num_neighbors=reorder, leaves_to_search=lts
        )
        rows = np.asarray(rows, dtype=np.int64)
        return np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)

    # Tune like the Faiss index: walk leaves_to_search upwards for each reorder budget, keep the
    # cheapest point that reaches the target on the tuning queries.
    tuning_started = time.perf_counter()
    trials, feasible = [], []
    ladder = [lt for lt in (5, 10, 15, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480) if lt <= leaves]
    for reorder in (100, 150, 200, 300, 400, 800):
        best, stalled = -1.0, 0
        for lts in ladder:
            t0 = time.perf_counter()
            found = run(d["tune_q"], K, reorder, lts)
            ms = 1e3 * (time.perf_counter() - t0) / len(found)
            per_query = per_query_recall(found, d["gt_tune"], K)
            r = round(float(per_query.mean()), 5)
            stderr = float(per_query.std(ddof=1) / math.sqrt(len(per_query)))
            failed = float(np.mean(per_query < floor))
            trial = {
                "reorder": reorder,
                "leaves_to_search": lts,
                "recall": r,
                "failed_queries": failed,
                "ms_per_query": round(ms, 4),
            }
            trials.append(trial)
            if r - z * stderr >= args.target_recall and failed <= max_failed:
                feasible.append(trial)
                break
            stalled = stalled + 1 if r <= best + 1e-3 else 0
            best = max(best, r)
            if stalled >= 3:
                break
    tune_s = time.perf_counter() - tuning_started
    if not feasible:
        best_trial = max(trials, key=lambda t: t["recall"])
        return {
            "method": "scann",
            "error": f"target not reached; best {best_trial}",
            "trials": trials,
        }
    chosen = min(feasible, key=lambda t: t["ms_per_query"])
    reorder, lts = chosen["reorder"], chosen["leaves_to_search"]

    eval_q, gt = d["eval_q"], d["gt_eval"]
    found = run(eval_q, K, reorder, lts)
    found10 = run(eval_q, 10, reorder, lts)
    searcher.set_num_threads(1)

    def one(q: np.ndarray, reorder: int = reorder, lts: int = lts) -> object:
        return searcher.search(
            q[0], final_num_neighbors=K, pre_reorder_num_neighbors=reorder, leaves_to_search=lts
        )

    latency = single_latency(one, eval_q, args.latency_queries)
    searcher.set_num_threads(os.cpu_count() or 1)
    searcher.search_batched_parallel(eval_q[:100], K, reorder, lts)
    t0 = time.perf_counter()
    searcher.search_batched_parallel(eval_q, K, reorder, lts)
    qps = len(eval_q) / (time.perf_counter() - t0)

    sweep = []
    searcher.set_num_threads(1)
    for lt in ladder:
        f = run(eval_q, K, reorder, lt)
        lat = single_latency(lambda q, lt=lt: one(q, reorder, lt), eval_q, 200)
        sweep.append(
            {
                "params": {"reorder": reorder, "leaves_to_search": lt},
                "recall_at_100": recall(f, gt, K),
                **tail(f, gt),
                **lat,
            }
        )
    return {
        "method": "scann",
        "factory": f"tree{leaves},AH(2 dims/block, aniso 0.2),reorder",
        "operating_point": {"leaves_to_search": lts, "pre_reorder_num_neighbors": reorder},
        "build_seconds": round(build_s, 2),
        "tune_seconds": round(tune_s, 2),
        "total_seconds": round(build_s + tune_s, 2),
        "peak_rss_mb": round(peak, 1),
        "peak_over_data_mb": round(peak - base_rss, 1),
        "tuning_recall_at_100": chosen["recall"],
        "recall_at_10": recall(found10, gt, 10),
        "recall_at_100": recall(found, gt, K),
        **tail(found, gt),
        **latency,
        "batch_qps": round(qps, 1),
        "sweep": sweep,
        "trials": trials,
    }


def worker(args: argparse.Namespace) -> None:
    block_tensorflow()
    cache = Path(args.cache)
    load_before = os.getloadavg()[0]
    if args.worker == "scann":
        result = run_scann(cache, args)
    else:
        result = run_faiss(args.worker, cache, args)
    result["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    leaked = [m for m, mod in sys.modules.items() if m.startswith("tensorflow") and mod is not None]
    result["tensorflow_imported"] = bool(leaked)
    Path(args.result).write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------- report


COLUMNS = (
    ("method", "method"),
    ("build_seconds", "build s"),
    ("tune_seconds", "tune s"),
    ("peak_rss_mb", "peak RSS MB"),
    ("peak_over_data_mb", "over data MB"),
    ("recall_at_10", "R@10"),
    ("recall_at_100", "R@100"),
    ("failed_queries", "queries R@100<0.5"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("batch_qps", "batch QPS"),
    ("speedup", "p50 vs exact"),
    ("vs_scann", "p50 / ScaNN p50"),
    ("operating_point", "operating point"),
)


def table(
    size: int, results: dict[str, dict[str, Any]], stats: dict[str, float], label: str
) -> str:
    """The markdown table of one catalogue; ``label`` names the data (see `data_description`)."""
    exact = results.get("exact", {}).get("p50_ms")
    scann = results.get("scann", {}).get("p50_ms")
    shape = ""
    if "query_shift" in stats:
        shape = (
            f"; queries vs videos: shift {stats['query_shift']} (vidrec's HNSW goes query-aware "
            f"from 1.0), norm of the mean query {stats['query_mean_norm']} "
            f"(of the mean video {stats['video_mean_norm']})"
        )
    lines = [
        f"### {size:,} videos, {label}",
        "",
        "Median similarity of the 1st / 10th / 100th true neighbour: "
        + " / ".join(str(stats.get(f"median_cos_at_{r}")) for r in (1, 10, 100))
        + shape,
        "",
        "| " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for method in METHODS:
        r = results.get(method)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {method} | error: {r['error'][:80]} |")
            continue
        row = dict(r)
        if method == "auto":
            row["method"] = f"auto (chose {r.get('kind')})"
        if "query_aware" in r and method in ("hnsw", "hnsw_sq", "ivf_sq"):
            row["method"] = f"{method} ({'query-aware' if r['query_aware'] else 'raw'})"
        row["speedup"] = f"{exact / r['p50_ms']:.1f}x" if exact else ""
        row["vs_scann"] = f"{r['p50_ms'] / scann:.2f}" if scann else ""
        row["operating_point"] = json.dumps(r.get("operating_point", {}), sort_keys=True)
        lines.append("| " + " | ".join(str(row.get(c[0], "")) for c in COLUMNS) + " |")
    return "\n".join(lines)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (recall, latency) points no other point beats on both, by increasing recall."""
    front: list[tuple[float, float]] = []
    for recall_, latency in sorted(points, key=lambda p: (-p[0], p[1])):
        if not front or latency < front[-1][1]:
            front.append((recall_, latency))
    return front[::-1]


def plot(
    all_results: dict[str, dict[str, dict[str, Any]]],
    target: float,
    path: Path,
    label: str,
    dim: int | None,
) -> None:
    """Recall@100 against single-query p50, one panel per catalogue size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(all_results, key=int)
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.8), squeeze=False)
    colors = {
        "exact": "black",
        "hnsw": "tab:blue",
        "hnsw_sq": "tab:purple",
        "ivf_sq": "tab:red",
        "ivf_hnsw_pq": "tab:orange",
        "auto": "tab:brown",
        "scann": "tab:green",
    }
    for ax, size in zip(axes[0], sizes, strict=True):
        for method, r in all_results[size].items():
            if "error" in r:
                continue
            c = colors.get(method, "gray")
            sweep = r.get("sweep", [])
            if sweep:
                ax.scatter(
                    [s["recall_at_100"] for s in sweep],
                    [s["p50_ms"] for s in sweep],
                    color=c,
                    alpha=0.35,
                    s=10,
                )
                front = pareto_front([(s["recall_at_100"], s["p50_ms"]) for s in sweep])
                ax.plot(*zip(*front, strict=True), "-", color=c, alpha=0.6, label=f"{method} sweep")
            ax.plot(
                [r["recall_at_100"]],
                [r["p50_ms"]],
                "*",
                color=c,
                ms=14,
                label=f"{method} tuned ({r['p50_ms']:.3f} ms)",
            )
        ax.axvline(target, color="gray", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("recall@100 vs exact (held-out queries)")
        ax.set_ylabel("single-query p50 latency, ms (1 thread)")
        ax.set_title(f"{int(size):,} videos, d={dim}, {label}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    block_tensorflow()
    # Before Faiss (libgomp) starts: OpenMP threads that spin while they wait turn a loaded
    # 2-core box pathological (PQ training 0.6 s -> 43 s); workers inherit the setting.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="synthetic catalogue sizes (default: 100000 1000000)"
    )
    parser.add_argument(
        "--embeddings",
        type=Path,
        help="a trained model's embeddings (.npz, see the module doc) instead of synthetic data",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=3_000)
    parser.add_argument("--spread", type=float, default=0.25, help="within-cluster scale")
    parser.add_argument("--zipf", type=float, default=0.9, help="cluster popularity skew")
    parser.add_argument(
        "--queries", type=int, help="evaluation queries (default 1000; --embeddings: all of them)"
    )
    parser.add_argument(
        "--tuning-queries", type=int, help="tuning queries (default 1000; --embeddings: all)"
    )
    parser.add_argument("--latency-queries", type=int, default=1_000)
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("artifacts/bench/ann"))
    parser.add_argument("--keep-cache", action="store_true", help="keep generated data")
    parser.add_argument(
        "--replot", action="store_true", help="only redraw the table and PNG from results.json"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    if args.replot:
        saved = json.loads((args.out / "results.json").read_text())
        write_outputs(args.out, saved["meta"], saved["results"])
        return 0

    import faiss

    datasets: list[tuple[str, Callable[[Path], None]]] = []
    if args.embeddings is not None:
        if args.sizes:
            print(f"[data] --sizes ignored: the catalogue is {args.embeddings}", flush=True)
        datasets.append(
            (
                trained_tag(args.embeddings, args),
                lambda cache: prepare_trained(args.embeddings, args, cache),
            )
        )
    else:
        args.queries = 1_000 if args.queries is None else args.queries
        args.tuning_queries = 1_000 if args.tuning_queries is None else args.tuning_queries
        for size in args.sizes or [100_000, 1_000_000]:
            tag = f"n{size}-d{args.dim}-c{args.clusters}-sp{args.spread}-z{args.zipf}-s{args.seed}"
            datasets.append((tag, lambda cache, size=size: prepare(size, args, cache)))

    args.out.mkdir(parents=True, exist_ok=True)
    all_results: dict[str, dict[str, dict[str, Any]]] = {}
    data_stats: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    for tag, make_data in datasets:
        cache = args.out / "cache" / tag
        make_data(cache)
        stats = json.loads((cache / "stats.json").read_text())
        size = int(stats["n"])
        data_stats[str(size)] = stats
        all_results[str(size)] = {}
        for method in args.methods:
            result_path = cache / f"{method}.json"
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                method,
                "--cache",
                str(cache),
                "--result",
                str(result_path),
                "--target-recall",
                str(args.target_recall),
                "--latency-queries",
                str(args.latency_queries),
            ]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0 or not result_path.exists():
                tail = (proc.stderr or "").strip().splitlines()[-3:]
                all_results[str(size)][method] = {"method": method, "error": " / ".join(tail)}
                print(f"[{size}] {method}: FAILED {tail}", flush=True)
                continue
            r = json.loads(result_path.read_text())
            all_results[str(size)][method] = r
            graph = ""
            if method in ("hnsw", "hnsw_sq", "ivf_sq", "auto"):
                graph = f" ({r.get('kind')}, {'query-aware' if r.get('query_aware') else 'raw'})"
            print(
                f"[{size}] {method}{graph}: R@100 {r.get('recall_at_100')} "
                f"p50 {r.get('p50_ms')} ms build {r.get('build_seconds')} s "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        if not args.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)

    meta = {
        "command": "python benchmarks/ann.py " + " ".join(sys.argv[1:]),
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "scann": _version("scann"),
        "target_recall": args.target_recall,
        "k": K,
        "data_stats": data_stats,
    }
    if args.embeddings is not None:
        (stats,) = data_stats.values()
        file = args.embeddings.stat()
        meta["data"] = {
            "kind": "trained",
            "path": str(args.embeddings.resolve()),
            "bytes": file.st_size,
            "modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(file.st_mtime)),
            "videos": int(stats["n"]),
            "dim": int(stats["dim"]),
            "tuning_queries": int(stats["tuning_queries"]),
            "queries": int(stats["queries"]),
        }
        meta.update(
            dim=int(stats["dim"]),
            queries=int(stats["queries"]),
            tuning_queries=int(stats["tuning_queries"]),
        )
    else:
        meta["data"] = {"kind": "synthetic"}
        meta.update(
            dim=args.dim,
            clusters=args.clusters,
            spread=args.spread,
            zipf=args.zipf,
            queries=args.queries,
            tuning_queries=args.tuning_queries,
        )
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "results": all_results}, indent=2)
    )
    write_outputs(args.out, meta, all_results)
    return 0


def write_outputs(out: Path, meta: dict[str, Any], results: dict[str, Any]) -> None:
    """Writes ``results.md`` and ``recall_latency.png`` and prints the tables."""
    stats = meta.get("data_stats", {})
    label, description = data_description(meta)
    text = "\n\n".join(table(int(s), r, stats.get(s, {}), label) for s, r in results.items())
    text = (
        f"`{meta['command']}` (load average during the run: see results.json)\n\n"
        f"{description}\n\n{text}"
    )
    (out / "results.md").write_text(text + "\n")
    plot(results, meta["target_recall"], out / "recall_latency.png", label, meta.get("dim"))
    print()
    print(text)
    print(f"\nwrote {out / 'results.json'}, results.md, recall_latency.png")


def data_description(meta: dict[str, Any]) -> tuple[str, str]:
    """A short label of the data a run used (headings, plot titles) and a sentence for the report.

    Runs from before ``--embeddings`` existed have no ``meta["data"]``: they are synthetic.
    """
    data = meta.get("data") or {"kind": "synthetic"}
    if data["kind"] == "trained":
        return (
            f"trained model ({Path(data['path']).name})",
            f"**Data: a trained model's embeddings**, not synthetic clusters: `{data['path']}` "
            f"({data['videos']:,} videos x {data['dim']}, {data['tuning_queries']} tuning and "
            f"{data['queries']} held-out evaluation queries from the user tower). A trained user "
            "tower's queries can sit apart from the videos (a narrow cone): the shift per table "
            "measures how far, and the hnsw row says whether vidrec's graph went query-aware.",
        )
    return (
        "synthetic clusters",
        f"**Data: synthetic** clustered embeddings (d={meta.get('dim')}, "
        f"{meta.get('clusters')} anisotropic Gaussian clusters, Zipf {meta.get('zipf')} sizes, "
        f"spread {meta.get('spread')}); the queries are held-out draws from the same mixture, "
        "so they are distributed like the videos (unlike a trained model's user tower).",
    )


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
