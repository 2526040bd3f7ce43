"""Offline evaluation: a bundle's model next to the baselines, one split, one table.

Rows: ``two_tower`` (retrieval alone, exact), ``two_stage`` (the merged candidates in the
ranker's order), ``served (...)`` when the train job's stage gate chose another order, and
``source/<name>`` (each item-to-item source's own list: its Recall@N is what it brings).

Leave-one-out per user (docs/design.md §8): the full catalogue is ranked, videos already
watched are filtered, HR@K / NDCG@K / MRR of the final list and Recall@N of the candidate list
are averaged over users, with catalogue coverage and category diversity of the top-K lists.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from candidates.sources import TWO_STAGE
from core.bundle import data_fingerprint
from core.config import EvaluationConfig
from core.errors import BundleError
from core.features import engagement_labels
from core.io import atomic_write_json
from core.metrics import Scorer, evaluate_scorer
from core.progress import Progress
from core.schema import Dataset
from core.splits import LeaveOneOutSplit, leave_one_out
from core.vocab import IdVocabulary
from pipelines.artifacts import (
    RetrievalBundle,
    load_candidates,
    load_ranker,
    load_retrieval,
    read_config,
    serving_order,
)
from pipelines.jobs.baselines import fit_baselines
from pipelines.jobs.ranking_data import SourceScorer, TwoStageScorer
from pipelines.jobs.train import SPLIT_LEAVE_ONE_OUT

logger = logging.getLogger(__name__)


def table_columns(config: EvaluationConfig) -> list[str]:
    """Metrics shown in the table, in order."""
    columns = [f"{m}@{k}" for k in config.ks for m in ("hr", "ndcg")] + ["mrr"]
    columns += [f"recall@{n}" for n in config.candidate_ns]
    return columns + [f"coverage@{config.diversity_k}", f"categories@{config.diversity_k}"]


@dataclasses.dataclass
class EvaluationResult:
    """Metrics of several scorers on one split.

    Attributes:
        dataset: Summary of the data.
        protocol: How the split was made and what was filtered.
        num_cases: Evaluated users.
        columns: Metrics to show in the table, in order.
        rows: Scorer name to its metrics.
        seconds: Scorer name to the seconds it took to fit (baselines) and score.
        bundle_id: The evaluated bundle, if any.
    """

    dataset: dict[str, object]
    protocol: str
    num_cases: int
    columns: list[str]
    rows: dict[str, dict[str, float]]
    seconds: dict[str, float]
    bundle_id: str | None = None

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def retrieval_scorer(bundle: RetrievalBundle) -> Scorer:
    """Exact inner-product scores of the bundle's towers over its whole catalogue."""
    catalogue = bundle.catalogue_rows()
    return lambda cases: bundle.encoders.case_scores(cases, catalogue)


def check_bundle_matches(bundle: RetrievalBundle, dataset: Dataset) -> None:
    """Refuses to evaluate a bundle on data other than what it was trained on.

    Raises:
        BundleError: Different data or split: the test events might have been trained on.
    """
    recorded = bundle.manifest.data
    if recorded.get("split") != SPLIT_LEAVE_ONE_OUT:
        raise BundleError(
            f"bundle {bundle.manifest.bundle_id} was trained with split "
            f"{recorded.get('split')!r}; leave-one-out evaluation needs a bundle from "
            "`vidrec train`"
        )
    if recorded.get("fingerprint") != data_fingerprint(dataset.interactions):
        raise BundleError(
            f"bundle {bundle.manifest.bundle_id} was trained on {recorded.get('name')!r} with "
            f"different interactions; evaluate it on the data it was trained on "
            f"(or train a bundle on {dataset.name!r})"
        )


def evaluate_split(
    scorers: Mapping[str, Scorer],
    split: LeaveOneOutSplit,
    video_vocab: IdVocabulary,
    video_categories: list[tuple[str, ...]],
    config: EvaluationConfig,
    progress: bool = False,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Runs every scorer on the split's test cases; returns metrics and seconds by name
    (``progress``: report each scorer's cases, rate and time left)."""
    rows: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for name, scorer in scorers.items():
        started = time.perf_counter()
        with Progress(
            f"evaluating {name}", len(split.test), unit="user", enabled=progress
        ) as counter:
            report = evaluate_scorer(
                scorer,
                split.test,
                video_vocab,
                ks=config.ks,
                ns=config.candidate_ns,
                diversity_k=config.diversity_k,
                video_categories=video_categories,
                progress=counter,
            )
        seconds[name] = time.perf_counter() - started
        rows[name] = report.metrics
        logger.info(
            "%s: %s",
            name,
            "  ".join(
                f"{k} {report.metrics[k]:.4f}" for k in table_columns(config) if k in report.metrics
            ),
        )
    return rows, seconds


def evaluate_dataset(
    dataset: Dataset,
    config: EvaluationConfig,
    bundle_dir: str | os.PathLike[str] | None = None,
    extra_scorers: Mapping[str, Scorer] | None = None,
    progress: bool = False,
) -> EvaluationResult:
    """Evaluates a bundle (retrieval alone and, with its ranker, the two-stage pipeline) and the
    configured baselines on leave-one-out.

    Args:
        dataset: The data the bundle was trained on.
        config: Cut-offs and baselines.
        bundle_dir: Bundle to evaluate; baselines only when None.
        extra_scorers: More scorers to put in the same table (e.g. a two-stage pipeline).
        progress: Report each scorer's cases with their rate and time left.

    Raises:
        BundleError: The bundle does not verify or was trained on other data.
    """
    split = leave_one_out(
        dataset.interactions, engagement=engagement_labels(dataset.interactions, dataset.videos)
    )
    bundle = None
    scorers: dict[str, Scorer] = {}
    fit_seconds: dict[str, float] = {}
    if bundle_dir is not None:
        bundle = load_retrieval(Path(bundle_dir))
        check_bundle_matches(bundle, dataset)
        video_vocab = bundle.features.video_vocab
        scorers["two_tower"] = retrieval_scorer(bundle)
        if (Path(bundle_dir) / "ranking").is_dir():
            ranker = load_ranker(bundle_dir, bundle)
            bundle_config = read_config(Path(bundle_dir))
            sources = load_candidates(
                Path(bundle_dir), bundle_config, bundle.features.video_vocab.num_rows
            )
            order = serving_order(bundle.manifest)
            two_stage = functools.partial(
                TwoStageScorer,
                bundle.encoders,
                bundle.catalogue_rows(),
                ranker,
                bundle_config.ranking,
                sources,
            )
            scorers["two_stage"] = two_stage(TWO_STAGE)
            if order != TWO_STAGE:
                # What the bundle serves, chosen by the train job's stage gate.
                scorers[f"served ({order})"] = two_stage(order)
            # Each source alone, its proposals in its own order: their Recall@N beside the
            # merged candidates' (the two-stage row's).
            for name in sources.graphs:
                scorers[f"source/{name}"] = SourceScorer(sources, name, bundle.features)
    else:
        video_vocab = IdVocabulary(dataset.videos["video_id"].to_numpy(np.int64))
    scorers.update(extra_scorers or {})
    for name in config.baselines:
        started = time.perf_counter()
        scorers[name] = fit_baselines([name], split.train, video_vocab, split.validation)[name]
        fit_seconds[name] = time.perf_counter() - started
    categories = _categories_by_column(dataset, video_vocab)
    rows, seconds = evaluate_split(scorers, split, video_vocab, categories, config, progress)
    for name, fit in fit_seconds.items():
        seconds[name] += fit
    return EvaluationResult(
        dataset=dataset.summary(),
        protocol=(
            "leave-one-out per user (last event test, previous validation); full catalogue "
            "ranked; watched videos filtered; ties counted against the target"
        ),
        num_cases=len(split.test),
        columns=table_columns(config),
        rows=rows,
        seconds=seconds,
        bundle_id=bundle.manifest.bundle_id if bundle else None,
    )


def _categories_by_column(dataset: Dataset, video_vocab: IdVocabulary) -> list[tuple[str, ...]]:
    by_id = dict(
        zip(
            dataset.videos["video_id"].to_numpy(np.int64), dataset.videos["categories"], strict=True
        )
    )
    return [tuple(by_id.get(int(v), ())) for v in video_vocab.ids]


def format_table(result: EvaluationResult) -> str:
    """Fixed-width table of the result, one row per scorer, best value of a column starred."""
    columns = [c for c in result.columns if any(c in r for r in result.rows.values())]
    best = {c: max(r.get(c, -np.inf) for r in result.rows.values()) for c in columns}
    width = max(len(n) for n in result.rows) + 2
    cell = max(len(c) for c in columns) + 3
    header = "model".ljust(width) + "".join(c.rjust(cell) for c in columns) + "  seconds"
    lines = [
        f"{result.dataset['name']}: {result.num_cases} users, {result.dataset['videos']} videos, "
        f"{result.dataset['interactions']} events  (* best in column)",
        header,
        "-" * len(header),
    ]
    for name, row in result.rows.items():
        cells = []
        for c in columns:
            value = row.get(c)
            text = "-" if value is None else f"{value:.4f}" + ("*" if value == best[c] else " ")
            cells.append(text.rjust(cell))
        lines.append(name.ljust(width) + "".join(cells) + f"  {result.seconds.get(name, 0):7.1f}")
    return "\n".join(lines)


def write_result(result: EvaluationResult, path: str | os.PathLike[str]) -> None:
    """Writes the result as JSON, atomically."""
    atomic_write_json(path, result.as_dict())
