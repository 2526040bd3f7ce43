"""VideoIndex: recall against exact search, exclusions, live changes, persistence.

Approximate results are always checked against exact inner-product search on the same seeded
data (the way Faiss' own tests do). Each kind is built and tuned once per module, saved, and every
test that changes an index works on a freshly loaded copy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from core.config import IndexConfig, VidrecConfig, config_from_dict, config_to_dict
from core.errors import BundleError, ConfigError, DataError, IndexBuildError
from index import (
    IDS_FILE,
    INDEX_FILE,
    META_FILE,
    REPORT_FILE,
    OperatingPoint,
    VideoIndex,
    choose_kind,
    exact_search,
    recall_at_k,
)
from tests.index.conftest import DIM, config_for

KINDS = ["flat", "hnsw", "hnsw_sq", "ivf_sq", "ivf_hnsw_pq"]


def exact(
    data: dict[str, np.ndarray], queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    return exact_search(queries, [(data["embeddings"], data["ids"])], k)


@pytest.fixture(scope="module")
def saved(data: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each kind built and tuned once on the catalogue, saved to its own directory."""
    out = {}
    for kind in KINDS:
        index = VideoIndex.build(
            data["embeddings"], data["ids"], config_for(kind), tuning_queries=data["queries"]
        )
        out[kind] = index.save(tmp_path_factory.mktemp(kind))
    return out


def fresh(saved: dict[str, Path], kind: str) -> VideoIndex:
    return VideoIndex.load(saved[kind], expected_dim=DIM)


# ---------------------------------------------------------------------------- recall


@pytest.mark.parametrize("kind", KINDS)
def test_recall_against_exact_meets_target(kind, saved, data):
    index = fresh(saved, kind)
    assert index.kind == kind
    if kind == "ivf_hnsw_pq":
        assert index.factory.startswith("IVF64_HNSW") and "PQ32x4fs" in index.factory
    expected_factory = {"hnsw_sq": "HNSW32,SQ8,RFlat", "ivf_sq": "IVF64,SQ8,RFlat"}
    if kind in expected_factory:
        assert index.factory == expected_factory[kind]
        assert index.operating_point.k_factor is not None
    q = data["queries"]
    _, truth = exact(data, q, 100)
    _, found = index.search(q, 100)
    recall = recall_at_k(found, truth, 100)
    assert recall >= 0.95
    if kind == "flat":
        assert recall > 0.999
    _, top10 = index.search(q, 10)  # a shorter list is not worse than the tuned recall@100
    assert recall_at_k(top10, truth, 10) >= 0.95
    report = index.report
    assert report["recall"]["at_k"] >= 0.95 and report["recall"]["k"] == 100
    assert report["tuning"]["query_source"] == "held_out"
    assert report["latency"]["single_query"]["p50_ms"] > 0
    assert report["latency"]["batch"]["qps"] > 0
    assert report["build"]["build_seconds"] >= 0
    on_disk = json.loads((saved[kind] / REPORT_FILE).read_text())
    assert (
        on_disk["factory"] == index.factory
        and on_disk["operating_point"] == report["operating_point"]
    )


def test_auto_choice_follows_size_and_memory_budget():
    cfg = IndexConfig(flat_max_videos=1_000, hnsw_max_videos=100_000)
    assert choose_kind(500, 64, cfg) == "flat"
    assert choose_kind(50_000, 64, cfg) == "hnsw"
    assert choose_kind(500_000, 64, cfg) == "ivf_hnsw_pq"
    tight = dataclasses.replace(cfg, memory_budget_mb=20)
    assert choose_kind(50_000, 64, tight) == "ivf_hnsw_pq"
    with pytest.raises(IndexBuildError, match=r"index\.memory_budget_mb=20"):
        choose_kind(500_000, 64, tight)
    with pytest.raises(IndexBuildError, match="memory_budget_mb"):
        choose_kind(50_000, 64, dataclasses.replace(tight, kind="hnsw"))


def test_unreachable_recall_target_fails_loudly(data):
    cfg = config_for("hnsw", hnsw_m=4, hnsw_ef_search=(8,), target_recall=0.9999, recall_k=100)
    with pytest.raises(
        IndexBuildError, match=r"cannot reach recall@100 >= 0\.9999.*hnsw_ef_search"
    ):
        VideoIndex.build(
            data["embeddings"][:3000], data["ids"][:3000], cfg, tuning_queries=data["queries"]
        )
    ivf = config_for("ivf_hnsw_pq", ivf_nprobe=(1,), refine_k_factor=(1.0,), target_recall=0.99)
    with pytest.raises(IndexBuildError, match=r"index\.ivf_nprobe, index\.refine_k_factor"):
        VideoIndex.build(
            data["embeddings"][:5000], data["ids"][:5000], ivf, tuning_queries=data["queries"]
        )


def test_tuning_without_held_out_queries_is_recorded(data):
    index = VideoIndex.build(data["embeddings"][:2000], data["ids"][:2000], config_for("hnsw"))
    assert index.report["tuning"]["query_source"] == "catalogue_sample"


@pytest.mark.parametrize("kind", KINDS)
def test_a_loaded_index_retunes_on_its_own_stored_vectors(kind, saved, data):
    index = fresh(saved, kind)
    q = data["queries"]
    report = index.tune(q)  # no embeddings=: exact ground truth from the index's own storage
    assert report["recall"]["at_k"] >= 0.95 and report["tuning"]["query_source"] == "held_out"
    _, truth = exact(data, q, 100)
    assert recall_at_k(index.search(q, 100)[1], truth, 100) >= 0.95
    if kind == "hnsw":  # without queries, vectors read back from the structure stand in
        assert index.tune()["tuning"]["query_source"] == "catalogue_sample"


def test_tuning_an_index_that_keeps_only_codes_needs_the_embeddings(data):
    x, ids, q = data["embeddings"][:2000], data["ids"][:2000], data["queries"]
    cfg = config_for("ivf_hnsw_pq", refine="sq8", ivf_nlist=16)
    index = VideoIndex.build(x, ids, cfg, tune=False)
    with pytest.raises(IndexBuildError, match="keeps no exact vectors; pass embeddings="):
        index.tune(q)
    assert index.tune(q, embeddings=x, ids=ids)["recall"]["at_k"] >= 0.95


# ---------------------------------------------------------------------------- search contract


@pytest.mark.parametrize("kind", KINDS)
def test_exclusions_are_honoured(kind, saved, data):
    index = fresh(saved, kind)
    q = data["queries"][:20]
    _, before = index.search(q, 30)
    exclude = [row[::2] for row in before]  # every other result of each query
    scores, ids = index.search(q, 30, exclude=exclude)
    assert ids.shape == (20, 30) and scores.shape == (20, 30)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    for row, banned in zip(ids, exclude, strict=True):
        assert not np.isin(row, banned).any()
        assert (row >= 0).all()  # the over-fetch refilled every slot
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # One query at a time (the serving path) answers exactly as the batch does.
    for i in range(len(q)):
        one_scores, one_ids = index.search(q[i : i + 1], 30, exclude=[exclude[i]])
        np.testing.assert_array_equal(one_ids[0], ids[i])
        np.testing.assert_allclose(one_scores[0], scores[i], rtol=0, atol=1e-6)
    if kind == "flat":
        _, truth = exact(data, q, 200)
        for row, t, banned in zip(ids, truth, exclude, strict=True):
            np.testing.assert_array_equal(row, t[~np.isin(t, banned)][:30])


@pytest.mark.parametrize("kind", KINDS)
def test_unfilled_slots_are_minus_one_and_never_leak(kind, data, tmp_path):
    n = 300 if kind == "ivf_hnsw_pq" else 40
    cfg = config_for(kind, ivf_nlist=4, pq_m=16)
    index = VideoIndex.build(data["embeddings"][:n], data["ids"][:n], cfg, tune=False)
    q = data["queries"][:3]
    excluded = data["ids"][: n // 2]
    scores, ids = index.search(q, n + 50, exclude=[excluded] * 3)
    assert ids.shape == (3, n + 50) and scores.shape == (3, n + 50)
    remaining = set(data["ids"][n // 2 : n].tolist())
    for row, srow in zip(ids, scores, strict=True):
        real = row[row >= 0]
        assert set(real.tolist()) == remaining  # every remaining video, nothing else
        assert (row[len(real) :] == -1).all()  # padding only after the real results
        assert np.isneginf(srow[len(real) :]).all() and np.isfinite(srow[: len(real)]).all()
    # Remove nearly everything: still [q, k], still no stale or fake ids.
    index.remove(data["ids"][: n - 2])
    _, ids = index.search(q, 10)
    assert ids.shape == (3, 10)
    assert set(ids[ids >= 0].tolist()) == set(data["ids"][n - 2 : n].tolist())


def test_search_input_validation(saved, data):
    index = fresh(saved, "flat")
    q = data["queries"][:2]
    with pytest.raises(DataError, match="dimension 32 does not match the index dimension 64"):
        index.search(q[:, :32].copy(), 5)
    with pytest.raises(DataError, match="float32"):
        index.search(q.astype(np.float64), 5)
    with pytest.raises(DataError, match=r"shape \[n, d\]"):
        index.search(q[0], 5)
    bad = q.copy()
    bad[1, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        index.search(bad, 5)
    with pytest.raises(DataError, match="zero vector"):
        index.search(np.zeros((1, DIM), np.float32), 5)
    with pytest.raises(DataError, match="k must be an int >= 1"):
        index.search(q, 0)
    with pytest.raises(DataError, match="2 lists for 1 queries"):
        index.search(q[:1], 5, exclude=[[1], [2]])


def test_build_input_validation(data):
    x, ids = data["embeddings"][:100], data["ids"][:100]
    cfg = config_for("flat")
    with pytest.raises(DataError, match="duplicate id"):
        VideoIndex.build(x, np.r_[ids[:-1], ids[0]], cfg)
    with pytest.raises(DataError, match=">= 0"):
        VideoIndex.build(x, -ids, cfg)
    with pytest.raises(DataError, match="100 ids for 99 embeddings"):
        VideoIndex.build(x[:99], ids, cfg)
    with pytest.raises(DataError, match="integer video ids"):
        VideoIndex.build(x, ids.astype(np.float64), cfg)
    with pytest.raises(DataError, match="empty"):
        VideoIndex.build(x[:0], ids[:0], cfg)


# ---------------------------------------------------------------------------- live changes


@pytest.mark.parametrize("kind", KINDS)
def test_add_then_search_finds_the_new_video(kind, saved, data):
    index = fresh(saved, kind)
    rng = np.random.default_rng(1)
    new = data["queries"][:5] + 0.01 * rng.standard_normal((5, DIM)).astype(np.float32)
    new_ids = np.arange(10**9, 10**9 + 5)
    assert index.add(new.astype(np.float32), new_ids) == 0
    assert index.count == len(data["ids"]) + 5
    _, ids = index.search(data["queries"][:5], 10)
    np.testing.assert_array_equal(ids[:, 0], new_ids)


@pytest.mark.parametrize("kind", KINDS)
def test_a_loaded_index_is_mapped_until_its_first_change_and_the_file_never_changes(
    kind, saved, data
):
    files = {path.name: path.read_bytes() for path in saved[kind].iterdir()}
    index = fresh(saved, kind)
    store = index._store
    assert store._mapped
    mapped = store.index
    before = index.search(data["queries"][:3], 10)
    index.add(data["queries"][:2], [10**9, 10**9 + 1])
    assert not store._mapped and store.index is not mapped
    index.remove([10**9])
    _, ids = index.search(data["queries"][1:2], 1)
    assert ids[0, 0] == 10**9 + 1
    # The file it was mapped from is as it was, and a fresh load answers as before.
    assert {path.name: path.read_bytes() for path in saved[kind].iterdir()} == files
    after = fresh(saved, kind).search(data["queries"][:3], 10)
    np.testing.assert_array_equal(after[1], before[1])


@pytest.mark.parametrize("kind", KINDS)
def test_update_replaces_the_vector(kind, saved, data):
    index = fresh(saved, kind)
    target = data["queries"][7:8]
    old_id = int(index.search(target, 1)[1][0, 0])
    moved_to = data["queries"][8:9]
    assert index.add(moved_to, [old_id]) == 1  # an update, not a new video
    assert index.count == len(data["ids"])
    scores, ids = index.search(moved_to, 5)
    assert ids[0, 0] == old_id and scores[0, 0] == pytest.approx(1.0, abs=1e-3)
    scores, ids = index.search(target, 200)
    assert np.count_nonzero(ids == old_id) <= 1  # never duplicated
    if old_id in ids:  # its score is now the new vector's
        got = scores[ids == old_id][0]
        assert got == pytest.approx(float(target[0] @ moved_to[0]), abs=2e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_removed_ids_are_never_returned_even_after_save_load(kind, saved, data, tmp_path):
    index = fresh(saved, kind)
    q = data["queries"][:50]
    _, top = index.search(q, 20)
    removed = np.unique(top[:, :5])
    assert index.remove(removed) == len(removed)
    assert index.remove(removed) == 0  # idempotent
    assert not index.contains(removed).any()
    if kind == "flat":
        assert index.tombstones == 0  # exact storage deletes physically
    else:
        assert index.tombstones == len(removed)  # HNSW and fast-scan IVF keep tombstones
    for loaded in (index, VideoIndex.load(index.save(tmp_path / "after"), expected_dim=DIM)):
        _, ids = loaded.search(q, 300)
        assert not np.isin(ids, removed).any()
        _, one = loaded.search(q[:1], 300)
        assert not np.isin(one, removed).any()
        assert loaded.count == len(data["ids"]) - len(removed)
    # A removed video that is uploaded again comes back with its new vector.
    back = int(removed[0])
    index.add(q[:1], [back])
    assert index.search(q[:1], 1)[1][0, 0] == back


def test_concurrent_single_query_search_matches_sequential(saved, data):
    index = fresh(saved, "hnsw")
    q = data["queries"]
    expected = [index.search(q[i : i + 1], 50) for i in range(len(q))]
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    errors: list[BaseException] = []

    def worker(rows: range) -> None:
        try:
            for i in rows:
                results[i] = index.search(q[i : i + 1], 50)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(range(t, len(q), 6),)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, (scores, ids) in enumerate(expected):
        np.testing.assert_array_equal(results[i][1], ids)
        np.testing.assert_allclose(results[i][0], scores, rtol=1e-6)


def test_searches_run_safely_alongside_takedowns(saved, data):
    index = fresh(saved, "hnsw")
    q = data["queries"][:40]
    victims = np.unique(index.search(q, 10)[1])
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                for i in range(len(q)):
                    _, ids = index.search(q[i : i + 1], 20)
                    assert ids.shape == (1, 20)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for chunk in np.array_split(victims, 10):
        index.remove(chunk)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert not np.isin(index.search(q, 100)[1], victims).any()


# ---------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_gives_identical_results(kind, saved, data, tmp_path):
    index = fresh(saved, kind)
    again = VideoIndex.load(index.save(tmp_path / "copy"), expected_dim=DIM)
    assert again.operating_point == index.operating_point and again.is_tuned
    assert again.factory == index.factory and again.count == index.count
    q = data["queries"]
    exclude = [data["ids"][i : i + 3] for i in range(len(q))]
    for k in (1, 100):
        s1, i1 = index.search(q, k, exclude=exclude)
        s2, i2 = again.search(q, k, exclude=exclude)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_or_altered_files_are_refused(saved, tmp_path):
    src = saved["hnsw"]
    truncated = _copy(src, tmp_path / "truncated")
    raw = (truncated / INDEX_FILE).read_bytes()
    (truncated / INDEX_FILE).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BundleError, match=r"videos\.faiss: truncated .* corrupted"):
        VideoIndex.load(truncated)

    flipped = _copy(src, tmp_path / "flipped")
    raw = bytearray((flipped / INDEX_FILE).read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    (flipped / INDEX_FILE).write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"videos\.faiss: checksum mismatch"):
        VideoIndex.load(flipped)

    ids_flipped = _copy(src, tmp_path / "ids")
    raw = bytearray((ids_flipped / IDS_FILE).read_bytes())
    raw[-3] ^= 0x01
    (ids_flipped / IDS_FILE).write_bytes(bytes(raw))
    with pytest.raises(BundleError, match=r"index_ids\.npy: checksum mismatch"):
        VideoIndex.load(ids_flipped)

    meta_altered = _copy(src, tmp_path / "meta")
    meta = json.loads((meta_altered / META_FILE).read_text())
    meta["count"] += 1
    (meta_altered / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(
        BundleError, match=r"index_meta\.json: checksum mismatch, the file was altered"
    ):
        VideoIndex.load(meta_altered)

    garbage = _copy(src, tmp_path / "garbage")
    (garbage / META_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        VideoIndex.load(garbage)

    missing = _copy(src, tmp_path / "missing")
    (missing / INDEX_FILE).unlink()
    with pytest.raises(BundleError, match=r"videos\.faiss: missing"):
        VideoIndex.load(missing)
    with pytest.raises(BundleError, match="not a saved index"):
        VideoIndex.load(tmp_path / "nowhere")


def test_dimension_mismatch_is_refused(saved):
    with pytest.raises(
        BundleError, match="index dimension 64 does not match expected dimension 32"
    ):
        VideoIndex.load(saved["flat"], expected_dim=32)
    assert VideoIndex.load(saved["flat"], expected_dim=64).dim == 64


# ---------------------------------------------------------------------------- config


def test_index_config_validation_names_the_field():
    with pytest.raises(ConfigError, match=r"index\.kind"):
        IndexConfig(kind="annoy")
    with pytest.raises(ConfigError, match=r"index\.pq_nbits.*4-bit"):
        IndexConfig(pq_nbits=8)
    with pytest.raises(ConfigError, match=r"index\.target_recall"):
        IndexConfig(target_recall=1.5)
    with pytest.raises(ConfigError, match=r"index\.hnsw_ef_search"):
        IndexConfig(hnsw_ef_search=())
    with pytest.raises(ConfigError, match=r"index\.refine"):
        IndexConfig(refine="pq")
    cfg = VidrecConfig(index=IndexConfig(kind="hnsw", hnsw_ef_search=(64, 128)))
    again = config_from_dict(VidrecConfig, json.loads(json.dumps(config_to_dict(cfg))))
    assert again.index == cfg.index


def test_pq_m_must_divide_the_dimension(data):
    with pytest.raises(IndexBuildError, match=r"index\.pq_m=24 must divide"):
        VideoIndex.build(data["embeddings"], data["ids"], config_for("ivf_hnsw_pq", pq_m=24))


def test_operating_point_override_is_checked(saved):
    index = fresh(saved, "hnsw")
    index.set_operating_point(OperatingPoint(ef_search=300))
    assert index.operating_point.ef_search == 300
    with pytest.raises(ConfigError, match="do not apply to a hnsw index"):
        index.set_operating_point(OperatingPoint(nprobe=4))


# ---------------------------------------------------------------------------- kind selection


def test_auto_keeps_the_kind_with_the_fastest_single_query_at_the_target(data, tmp_path):
    cfg = config_for("auto", flat_max_videos=1_000, candidate_kinds=("ivf_sq", "hnsw"))
    index = VideoIndex.build(data["embeddings"], data["ids"], cfg, tuning_queries=data["queries"])
    selection = index.report["build"]["kind_selection"]
    assert selection["by"] == "single_query_p50_ms"
    candidates = {c["kind"]: c for c in selection["candidates"]}
    assert sorted(candidates) == ["hnsw", "ivf_sq"]
    fastest = min(candidates.values(), key=lambda c: c["p50_ms"])
    assert index.kind == fastest["kind"] and index.factory == fastest["factory"]
    assert index.operating_point.to_dict() == fastest["operating_point"]
    assert all(c["recall"] >= 0.95 for c in candidates.values())
    # The choice and the comparison survive a save/load.
    loaded = VideoIndex.load(index.save(tmp_path / "auto"), expected_dim=DIM)
    assert loaded.kind == index.kind
    assert loaded.report["build"]["kind_selection"] == selection


@pytest.mark.parametrize("kinds", [("ivf_sq", "hnsw"), ("hnsw", "ivf_sq")])
def test_auto_parks_the_best_so_far_on_disk_and_serves_it_after(
    data, tmp_path, monkeypatch, caplog, kinds
):
    # Whichever kind wins is built first in one of the two orders: it waits on disk while
    # the other builds, and comes back loaded, answering as a built index does.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    cfg = config_for("auto", flat_max_videos=1_000, candidate_kinds=kinds)
    with caplog.at_level(logging.INFO, logger="index.video_index"):
        index = VideoIndex.build(
            data["embeddings"], data["ids"], cfg, tuning_queries=data["queries"]
        )
    selection = index.report["build"]["kind_selection"]["candidates"]
    fastest = min(selection, key=lambda c: c["p50_ms"])
    assert [c["kind"] for c in selection] == list(kinds)
    assert index.kind == fastest["kind"]
    assert index.operating_point.to_dict() == fastest["operating_point"]
    reloaded = f"loaded {fastest['kind']} index" in caplog.text
    assert reloaded == (fastest["kind"] == kinds[0])
    assert f"saved {kinds[0]} index" in caplog.text
    assert list(tmp_path.iterdir()) == []  # the parking directory is gone
    _, truth = exact(data, data["queries"], 100)
    assert recall_at_k(index.search(data["queries"], 100)[1], truth, 100) >= 0.95


def test_auto_leaves_out_a_kind_that_misses_the_target(data):
    cfg = config_for(
        "auto",
        flat_max_videos=1_000,
        candidate_kinds=("ivf_sq", "hnsw"),
        ivf_nprobe=(1,),
        refine_k_factor=(1.0,),
    )
    index = VideoIndex.build(
        data["embeddings"][:3000], data["ids"][:3000], cfg, tuning_queries=data["queries"]
    )
    assert index.kind == "hnsw"
    (ivf,) = [c for c in index.report["build"]["kind_selection"]["candidates"] if "error" in c]
    assert ivf["kind"] == "ivf_sq" and "cannot reach recall@100" in ivf["error"]
    hopeless = dataclasses.replace(cfg, candidate_kinds=("ivf_sq",), hnsw_max_videos=1_000)
    with pytest.raises(IndexBuildError, match=r"ivf_sq index \(IVF\d+,SQ8,RFlat\) cannot reach"):
        VideoIndex.build(
            data["embeddings"][:3000], data["ids"][:3000], hopeless, tuning_queries=data["queries"]
        )


def test_candidate_kinds_follow_size_budget_and_config():
    from index.structures import candidate_kinds

    cfg = IndexConfig(flat_max_videos=1_000, hnsw_max_videos=100_000)
    assert candidate_kinds(500, 64, cfg) == ["flat"]
    assert candidate_kinds(50_000, 64, cfg) == ["ivf_sq", "hnsw"]
    assert candidate_kinds(500_000, 64, cfg) == ["ivf_sq"]  # graphs stop at hnsw_max_videos
    assert candidate_kinds(50_000, 64, dataclasses.replace(cfg, kind="hnsw_sq")) == ["hnsw_sq"]
    assert candidate_kinds(50_000, 64, dataclasses.replace(cfg, candidate_kinds=())) == ["hnsw"]
    with pytest.raises(ConfigError, match=r"index\.candidate_kinds: must be distinct kinds"):
        IndexConfig(candidate_kinds=("ivf_sq", "annoy"))
    with pytest.raises(ConfigError, match=r"index\.candidate_kinds"):
        IndexConfig(candidate_kinds=("hnsw", "hnsw"))


def test_an_index_saved_before_candidate_kinds_existed_loads(saved, tmp_path):
    import shutil

    from index.persistence import _meta_digest

    copy = Path(shutil.copytree(saved["hnsw"], tmp_path / "old"))
    meta = json.loads((copy / META_FILE).read_text())
    del meta["config"]["candidate_kinds"]  # what an index written by the previous version holds
    meta["meta_sha256"] = _meta_digest(meta)
    (copy / META_FILE).write_text(json.dumps(meta))
    old = VideoIndex.load(copy, expected_dim=DIM)
    assert old.kind == "hnsw" and old.count == fresh(saved, "hnsw").count
