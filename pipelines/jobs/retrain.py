"""The nightly retrain (docs/design.md §4): data up to a cutoff -> warm start -> gate -> publish.

1. Take the job lock (one run at a time; a crashed run's lock dies with it).
2. Read the base interactions plus the event store's events before the cutoff; uploads from
   the store join the catalogue. A rerun with the same cutoff and the same data finds its
   earlier bundle and returns its outcome without training again.
3. Split by time: the last ``retrain.window_days`` before the cutoff are the test window; the
   model trains on what precedes it (each user's last event there validates early stopping).
4. Grow the serving bundle's vocabularies with new videos and users and warm-start both models
   from its weights (existing rows keep their values); train retrieval, then the ranker on
   retrieval's own candidates; build and verify the index.
5. Score the new two-stage pipeline and the serving bundle's on the same window, over the same
   catalogue (a video the serving bundle does not know counts as a miss for it).
6. Write the bundle (always, for inspection); publish it only when it is not worse than the
   serving one beyond ``retrain.tolerance``; apply retention; write a report.

A crash at any step leaves ``CURRENT`` and every published bundle untouched: the bundle is
staged in ``bundles/.tmp-*`` and only renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.bundle import BundleStore, data_fingerprint, read_manifest
from core.config import VidrecConfig
from core.errors import DataError
from core.features import FeatureSpace, engagement_labels
from core.io import atomic_write_json, atomic_write_text
from core.lock import JobLock
from core.metrics import evaluate_scorer
from core.schema import Dataset
from core.splits import EvalCases, last_event_holdout, time_cut
from core.vocab import FIRST_ID_ROW
from pipelines import plots
from pipelines.artifacts import LoadedBundle, load_bundle
from pipelines.jobs.ranking_data import TwoStageScorer
from pipelines.jobs.train import TrainedStages, train_stages, write_bundle
from pipelines.jobs.weights import load_weights
from pipelines.serving.events import EventStore

logger = logging.getLogger(__name__)

SPLIT_TIME_CUT = "time_cut"
PUBLISHED, GATED_OUT = "published", "gated_out"


@dataclasses.dataclass(frozen=True)
class RetrainResult:
    """Outcome of one retrain.

    Attributes:
        status: ``"published"`` or ``"gated_out"``.
        bundle_id: The bundle this run wrote (or found, when rerun).
        serving_id: The serving bundle afterwards.
        new_metrics: The new pipeline's metrics on the window.
        serving_metrics: The previously serving pipeline's metrics on the same window.
        reason: Why it was published or not.
        report: Path of the human-readable report.
        reused: True when an earlier run with the same cutoff and data was found.
    """

    status: str
    bundle_id: str
    serving_id: str | None
    new_metrics: dict[str, float]
    serving_metrics: dict[str, float]
    reason: str
    report: Path
    reused: bool = False


def combined_data(
    base: Dataset, events: EventStore, cutoff: int
) -> tuple[Dataset, int, dict[str, int]]:
    """Base data plus stored events before ``cutoff``, and uploads into the catalogue.

    Returns:
        ``(dataset, largest event id included, counts)``; events of videos that nobody ever
        uploaded are dropped and counted.
    """
    last_id = events.last_id()
    # Events stored after this point (even before the cutoff) are left for the next run; the
    # server keeps reading them from the store meanwhile.
    stored = events.interactions(until=cutoff, until_id=last_id)
    uploads = pd.DataFrame(events.uploaded_videos())
    videos = base.videos
    if len(uploads):
        uploads = uploads.loc[~uploads["video_id"].isin(videos["video_id"])]
        videos = pd.concat([videos, uploads], ignore_index=True)
    known = stored["video_id"].isin(videos["video_id"])
    base_events = base.interactions.loc[base.interactions["timestamp"] < cutoff]
    frames = [base_events, stored.loc[known, base_events.columns.intersection(stored.columns)]]
    interactions = pd.concat(frames, ignore_index=True)
    duplicated = interactions.duplicated(["user_id", "video_id", "timestamp"])
    dataset = Dataset(
        name=base.name,
        interactions=interactions.loc[~duplicated],
        videos=videos,
        users=base.users,
    )
    counts = {
        "base_events": len(base_events),
        "stored_events": int(known.sum()),
        "dropped_unknown_video": int((~known).sum()),
        "duplicates": int(duplicated.sum()),
        "uploads": len(uploads),
    }
    return dataset, last_id, counts


def run_fingerprint(dataset: Dataset, cutoff: int, config: VidrecConfig) -> str:
    """Identifies a run: same data, cutoff and config give the same bundle."""
    digest = hashlib.sha256()
    digest.update(data_fingerprint(dataset.interactions).encode())
    digest.update(str(cutoff).encode())
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _previous_run(store: BundleStore, fingerprint: str) -> tuple[str, dict[str, Any]] | None:
    for bundle_id in reversed(store.bundle_ids()):
        manifest = read_manifest(store.path(bundle_id))
        if manifest.data.get("run_fingerprint") == fingerprint:
            return bundle_id, manifest.metrics.get("gate", {})
    return None


class _ForeignCatalogueScorer:
    """Scores of another bundle's pipeline laid out in this catalogue's column order.

    Videos the other bundle does not know get -inf: it cannot recommend them.
    """

    def __init__(self, scorer: TwoStageScorer, theirs: FeatureSpace, ours: FeatureSpace) -> None:
        self.scorer = scorer
        rows = theirs.video_vocab.lookup(ours.video_vocab.ids)
        self.known = rows >= FIRST_ID_ROW
        self.columns = rows[self.known] - FIRST_ID_ROW

    def __call__(self, cases: EvalCases) -> np.ndarray:
        theirs = self.scorer(cases)
        out = np.full((len(cases), len(self.known)), -np.inf, dtype=np.float32)
        out[:, self.known] = theirs[:, self.columns]
        return out


def compare_on_window(
    new: TrainedStages,
    serving: LoadedBundle | None,
    cases: EvalCases,
    config: VidrecConfig,
) -> tuple[dict[str, float], dict[str, float]]:
    """Two-stage metrics of the new pipeline and of the serving one on the same cases."""
    features = new.features
    ranker_config = config.ranking
    scorer = TwoStageScorer(
        new.encoders,
        new.catalogue,
        new.ranker.scorer(),
        ranker_config,
        new.sources,
        new.gate["order"],
    )
    ks, ns = config.evaluation.ks, config.evaluation.candidate_ns
    new_metrics = evaluate_scorer(scorer, cases, features.video_vocab, ks=ks, ns=ns).metrics
    if serving is None or serving.ranker is None:
        return new_metrics, {}
    theirs = TwoStageScorer(
        serving.retrieval.encoders,
        serving.retrieval.catalogue_rows(),
        serving.ranker,
        serving.config.ranking,
        serving.sources,
        serving.order,
    )
    foreign = _ForeignCatalogueScorer(theirs, serving.retrieval.features, features)
    serving_metrics = evaluate_scorer(foreign, cases, features.video_vocab, ks=ks, ns=ns).metrics
    return new_metrics, serving_metrics


def gate(
    new: dict[str, float], serving: dict[str, float], metric: str, tolerance: float
) -> tuple[bool, str]:
    """Whether to publish, and why (a sentence for the report)."""
    if not serving:
        return True, "no serving bundle to compare with"
    floor = serving[metric] * (1.0 - tolerance)
    verdict = (
        f"{metric} {new[metric]:.4f} against the serving bundle's {serving[metric]:.4f} "
        f"(floor {floor:.4f} at tolerance {tolerance:.0%})"
    )
    if new[metric] >= floor:
        return True, f"not worse: {verdict}"
    return False, f"worse: {verdict}"


def fold_in_window(
    stages: TrainedStages,
    dataset: Dataset,
    cutoff: int,
    window: int,
    config: VidrecConfig,
    progress: bool = False,
) -> tuple[TrainedStages, dict[str, Any]]:
    """The gated models, trained ``retrain.fold_in_epochs`` more epochs on every event before
    the cutoff, the gate's window included: the newest day is the most valuable one on a video
    platform, and without this pass the served models would never learn from it.

    Warm-started from the gated models (vocabularies grown by the window's new videos and
    users). The window's events are trained on, so nothing can judge this pass honestly: it
    keeps the gated models' stage gate verdict, and each user's last event only steers the
    index tuning and the (single-epoch) bookkeeping as validation.

    Returns:
        ``(the folded-in stages, the manifest's fold_in record)``.
    """
    events = dataset.interactions[dataset.interactions["timestamp"] < cutoff]
    engagement = engagement_labels(events, dataset.videos)
    _, validation = last_event_holdout(events, engagement=engagement)
    features = stages.features.grow(videos=dataset.videos, interactions=events, users=dataset.users)
    epochs = config.retrain.fold_in_epochs
    short = dataclasses.replace(
        config,
        retrieval=dataclasses.replace(config.retrieval, max_epochs=epochs),
        ranking=dataclasses.replace(config.ranking, max_epochs=epochs),
    )
    window_events = int((events["timestamp"] >= cutoff - window).sum())
    logger.info(
        "fold-in: %d more epoch(s) on %d events, the window's %d included",
        epochs,
        len(events),
        window_events,
    )
    folded = train_stages(
        events,
        validation,
        features,
        dataset.videos,
        short,
        initial_weights={
            "retrieval": stages.retrieval.model.get_weights(),
            "ranking": stages.ranker.model.get_weights(),
        },
        progress=progress,
        gate=stages.gate,
        recency=stages.recency,
    )
    record = {
        "epochs": epochs,
        "events": len(events),
        "window_events": window_events,
        "seconds": round(sum(folded.seconds.values()), 1),
    }
    return folded, record


def retrain_job(
    base: Dataset,
    events: EventStore,
    store: BundleStore,
    config: VidrecConfig,
    cutoff: int,
    progress: bool = False,
) -> RetrainResult:
    """Runs the nightly retrain for ``cutoff`` (seconds since the epoch).

    Raises:
        LockHeldError: Another job holds the store's lock.
        DataError: Too little data in the window to judge, or nothing to train on.
    """
    with JobLock(store.root, command=f"retrain --cutoff {cutoff}") as lock:
        return _retrain_locked(base, events, store, config, cutoff, progress, lock.info.started)


def _retrain_locked(
    base: Dataset,
    events: EventStore,
    store: BundleStore,
    config: VidrecConfig,
    cutoff: int,
    progress: bool,
    lock_started: float,
) -> RetrainResult:
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    store.sweep_staging(older_than=lock_started)
    dataset, events_until_id, counts = combined_data(base, events, cutoff)
    fingerprint = run_fingerprint(dataset, cutoff, config)
    serving_id = store.current_id()
    previous = _previous_run(store, fingerprint)
    if previous is not None:
        bundle_id, recorded = previous
        logger.info("cutoff %d with the same data was already run: bundle %s", cutoff, bundle_id)
        return RetrainResult(
            status=recorded.get("status", GATED_OUT),
            bundle_id=bundle_id,
            serving_id=serving_id,
            new_metrics=recorded.get("new", {}),
            serving_metrics=recorded.get("serving", {}),
            reason=recorded.get("reason", "earlier run"),
            report=store.path(bundle_id) / "reports" / "retrain.md",
            reused=True,
        )
    retrain = config.retrain
    window = int(retrain.window_days * 86_400)
    engagement = engagement_labels(dataset.interactions, dataset.videos)
    split = time_cut(dataset.interactions, cutoff - window, window, engagement=engagement)
    cases = split.test
    if len(cases) < retrain.min_window_users:
        raise DataError(
            f"only {len(cases)} user(s) watched something new in the window before cutoff "
            f"{cutoff}; retrain.min_window_users is {retrain.min_window_users}: the gate cannot "
            "judge (move the cutoff or widen retrain.window_days)"
        )
    if len(cases) > retrain.max_window_users:
        picked = np.random.default_rng(0).choice(len(cases), retrain.max_window_users, False)
        cases = cases.subset(np.sort(picked))
    train_engagement = engagement_labels(split.train, dataset.videos)
    train, validation = last_event_holdout(split.train, engagement=train_engagement)
    seconds["prepare"] = time.perf_counter() - started

    serving = load_bundle(store.path(serving_id)) if serving_id else None
    initial: dict[str, list[np.ndarray]] = {}
    if serving is not None:
        features = serving.retrieval.features.grow(
            videos=dataset.videos, interactions=train, users=dataset.users
        )
        if retrain.warm_start:
            initial = {
                "retrieval": load_weights(serving.path / "retrieval"),
                "ranking": load_weights(serving.path / "ranking"),
            }
    else:
        features = FeatureSpace.fit(config.features, dataset.videos, train, dataset.users)
    stages = train_stages(
        train,
        validation,
        features,
        dataset.videos,
        config,
        initial_weights=initial,
        progress=progress,
    )
    seconds.update(stages.seconds)

    started = time.perf_counter()
    new_metrics, serving_metrics = compare_on_window(stages, serving, cases, config)
    promote, reason = gate(new_metrics, serving_metrics, retrain.gate_metric, retrain.tolerance)
    seconds["gate"] = time.perf_counter() - started
    status = PUBLISHED if promote else GATED_OUT
    logger.info("gate: %s -> %s", reason, status)
    fold_in, gated = None, stages
    if promote and retrain.fold_in_epochs:
        started = time.perf_counter()
        stages, fold_in = fold_in_window(stages, dataset, cutoff, window, config, progress)
        seconds["fold_in"] = time.perf_counter() - started
    gate_record = {
        "status": status,
        "reason": reason,
        "metric": retrain.gate_metric,
        "new": new_metrics,
        "serving": serving_metrics,
        "serving_bundle": serving_id,
        "window_users": len(cases),
    }
    data = {
        **dataset.summary(),
        "fingerprint": data_fingerprint(dataset.interactions),
        "run_fingerprint": fingerprint,
        "split": SPLIT_TIME_CUT,
        "cutoff": cutoff,
        "window_seconds": window,
        "events_until_id": events_until_id,
        "sources": counts,
    }
    bundle_id, bundle_dir = write_bundle(
        store,
        stages,
        dataset,
        config,
        data=data,
        metrics={
            "gate": gate_record,
            "validation": stages.validation,
            "seconds": seconds,
            **({"fold_in": fold_in} if fold_in else {}),
        },
        events_until_id=events_until_id,
        extra_reports=lambda path: _write_report(path, gate_record, data, gated, seconds, fold_in),
    )
    if promote:
        store.publish(bundle_id, reason=f"retrain --cutoff {cutoff}: {reason}")
    store.apply_retention(config.bundles.keep_last, running_since=lock_started)
    return RetrainResult(
        status=status,
        bundle_id=bundle_id,
        serving_id=store.current_id(),
        new_metrics=new_metrics,
        serving_metrics=serving_metrics,
        reason=reason,
        report=bundle_dir / "reports" / "retrain.md",
    )


def _write_report(
    reports: Path,
    gate_record: dict[str, Any],
    data: dict[str, Any],
    stages: TrainedStages,
    seconds: dict[str, float],
    fold_in: dict[str, Any] | None,
) -> None:
    """``retrain.md`` + ``retrain.json`` + a PNG of the new and serving metrics (``stages``:
    the models the gate judged)."""
    new, serving = gate_record["new"], gate_record["serving"]
    names = [k for k in ("hr@10", "ndcg@10", "mrr", "recall@100", "recall@300") if k in new]
    lines = [
        f"# Retrain, cutoff {data['cutoff']}",
        "",
        f"**{gate_record['status']}**: {gate_record['reason']}.",
        "",
        f"Window: {data['window_seconds'] / 86_400:g} day(s) before the cutoff, "
        f"{gate_record['window_users']} users; data: {data['interactions']} events "
        f"({data['sources']}), {data['videos']} videos, {data['users']} users.",
        "",
        "| metric | new | serving | change |",
        "|---|---|---|---|",
    ]
    for name in names:
        before = serving.get(name)
        change = "" if before in (None, 0) else f"{(new[name] - before) / before:+.1%}"
        before_text = "-" if before is None else f"{before:.4f}"
        lines.append(f"| {name} | {new[name]:.4f} | {before_text} | {change} |")
    lines += [
        "",
        "Training: retrieval kept epoch "
        f"{stages.retrieval.history.best_epoch} of {len(stages.retrieval.history.epochs)}, "
        f"ranker epoch {stages.ranker.history.best_epoch} of "
        f"{len(stages.ranker.history.epochs)} (curves: retrieval_training.png, "
        "ranking_training.png).",
        "",
        "Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()),
        "",
    ]
    if fold_in:
        lines[-1:-1] = [
            f"Fold-in: after the gate, {fold_in['epochs']} more epoch(s) on all "
            f"{fold_in['events']} events before the cutoff, the window's "
            f"{fold_in['window_events']} included ({fold_in['seconds']:.0f} s); the published "
            "models are these.",
            "",
        ]
    atomic_write_text(reports / "retrain.md", "\n".join(lines))
    atomic_write_json(
        reports / "retrain.json",
        {"gate": gate_record, "data": data, "seconds": seconds, "fold_in": fold_in},
    )
    plots.metric_comparison(
        reports / "retrain.png",
        "new vs serving on the window",
        {
            "new": {k: new[k] for k in names},
            "serving": {k: serving[k] for k in names if k in serving},
        },
    )
