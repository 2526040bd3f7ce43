"""Item-to-item candidate sources, counted from the training events and read at request time.

Beside the two-tower index, three sources propose what to watch next from the user's latest
watches (docs/design.md §3):

- ``transition``: what users watched right after each video (a first-order chain; the series
  and binges of a video platform live here);
- ``covisit``: what users watched within a few positions of each video, either order (item
  kNN over short sessions);
- ``creator``: the same creator's next upload, where the catalogue knows creators and upload
  times (the next episode of a series is the creator's next upload).

They also describe every candidate, whoever proposed it, with the evidence the ranker reads
(`EVIDENCE_FEATURES`): how strongly it follows the latest watches in each source, its
retrieval score and rank, which lists proposed it, its popularity and its age. The same
functions serve training lists, evaluation and requests, so the ranker sees one definition.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from candidates.graph import ItemGraph
from core.config import CANDIDATE_SOURCES, CandidatesConfig
from core.errors import BundleError
from core.io import atomic_save_npy, atomic_write_json, map_npy
from core.vocab import FIRST_ID_ROW, IdVocabulary

logger = logging.getLogger(__name__)

RETRIEVAL = "retrieval"
# Where a candidate came from: the index first, then the item-to-item sources.
ORIGINS: tuple[str, ...] = (RETRIEVAL, *CANDIDATE_SOURCES)
EVIDENCE_FEATURES: tuple[str, ...] = (
    "retrieval_score",
    "retrieval_rank",
    "transition_score",
    "transition_last_count",
    "covisit_score",
    "covisit_count",
    "creator_score",
    *(f"from_{origin}" for origin in ORIGINS),
    "popularity",
    "freshness",
    "upload_known",
)
EVIDENCE_WIDTH = len(EVIDENCE_FEATURES)
# Column of each feature in an evidence row (the batched and the one-user paths both write them).
EVIDENCE_COLUMN = {name: i for i, name in enumerate(EVIDENCE_FEATURES)}
# Freshness is log1p(age in days) scaled by ten years' worth, so it stays within [0, ~1].
FRESHNESS_SCALE = float(np.log1p(3_650.0))
STATE_FILE = "sources.json"
TWO_STAGE = "two_stage"
# The orders a bundle can serve its merged candidates in: the ranker's, retrieval's alone, or
# one source's (the stage gate of the train job picks one on validation).
SERVING_ORDERS: tuple[str, ...] = (TWO_STAGE, RETRIEVAL, *CANDIDATE_SOURCES)


@dataclasses.dataclass
class CandidateSources:
    """The sources of one bundle and the per-video facts their evidence reads.

    Attributes:
        config: How they were built and how they read a history.
        graphs: One `ItemGraph` per configured source.
        popularity: ``[R] float32`` training watches per video row.
        upload_time: ``[R] float64`` upload time in seconds per row (NaN when unknown).
        recency_decay: Weight of each older latest watch relative to the next newer one
            (`candidates.recency.fit_recency_decay` picks it on validation cases).
    """

    config: CandidatesConfig
    graphs: dict[str, ItemGraph]
    popularity: np.ndarray
    upload_time: np.ndarray
    recency_decay: float

    def __post_init__(self) -> None:
        # Read by every request's evidence: a million-row maximum is not free.
        self._log_top_popularity = float(np.log1p(max(float(self.popularity.max(initial=0)), 1)))

    @property
    def num_rows(self) -> int:
        return len(self.popularity)

    @classmethod
    def build(
        cls,
        interactions: pd.DataFrame,
        videos: pd.DataFrame,
        video_vocab: IdVocabulary,
        config: CandidatesConfig,
    ) -> CandidateSources:
        """Counts the sources from training interactions (sorted by user, then time).

        Args:
            interactions: Validated training interactions.
            videos: The catalogue (creators and upload times for ``creator``).
            video_vocab: Row order of the graphs.
            config: Which sources and how many neighbours to keep.
        """
        num_rows = video_vocab.num_rows
        rows = video_vocab.lookup(interactions["video_id"].to_numpy(np.int64))
        users = interactions["user_id"].to_numpy(np.int64)
        graphs: dict[str, ItemGraph] = {}
        if "transition" in config.sources:
            graphs["transition"] = _sequence_graph(rows, users, 1, num_rows, config, both=False)
        if "covisit" in config.sources:
            graphs["covisit"] = _sequence_graph(
                rows, users, config.covisit_window, num_rows, config, both=True
            )
        if "creator" in config.sources:
            graphs["creator"] = _creator_graph(videos, video_vocab, config)
        known = rows[rows >= FIRST_ID_ROW]
        popularity = np.bincount(known, minlength=num_rows).astype(np.float32)
        upload_time = np.full(num_rows, np.nan)
        if "upload_time" in videos:
            video_rows = video_vocab.lookup(videos["video_id"].to_numpy(np.int64))
            stamps = pd.to_numeric(videos["upload_time"], errors="coerce").to_numpy(np.float64)
            upload_time[video_rows[video_rows >= FIRST_ID_ROW]] = stamps[video_rows >= FIRST_ID_ROW]
        logger.info(
            "candidate sources: %s",
            ", ".join(f"{name} {graph.num_edges} edges" for name, graph in graphs.items()),
        )
        return cls(config, graphs, popularity, upload_time, config.recency_decay)

    # -- reading a history ----------------------------------------------------------------

    def recent(self, history_rows: np.ndarray) -> np.ndarray:
        """The latest ``recent_watches`` known rows of left-padded histories, newest first.

        Args:
            history_rows: ``[b, L] int64`` oldest first, left-padded with 0.

        Returns:
            ``[b, m] int64``, 0 where a history is shorter.
        """
        m = self.config.recent_watches
        history_rows = np.asarray(history_rows, dtype=np.int64)
        out = np.zeros((len(history_rows), m), dtype=np.int64)
        take = min(m, history_rows.shape[1])
        if take:
            out[:, :take] = history_rows[:, ::-1][:, :take]
        return np.where(out >= FIRST_ID_ROW, out, 0)

    @property
    def recency_weights(self) -> np.ndarray:
        """``[m] float64``: 1 for the newest watch, times ``recency_decay`` per older one."""
        return self.recency_decay ** np.arange(self.config.recent_watches, dtype=np.float64)

    def with_recency_decay(self, decay: float) -> CandidateSources:
        """The same sources reading the latest watches with another decay."""
        return dataclasses.replace(self, recency_decay=float(decay))

    def propose(
        self, recent: np.ndarray, exclude: np.ndarray, n: int | None = None
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each source's best candidates for each list.

        Args:
            recent: ``[b, m] int64`` latest watches, newest first (`recent`).
            exclude: ``[b, x] int64`` rows never to propose (the watched videos; 0 ignored).
            n: Candidates per source (default ``per_source``).

        Returns:
            Source name to ``(rows [b, n] int64, scores [b, n] float32)``, best first, row 0
            where a source has fewer.
        """
        n = self.config.per_source if n is None else n
        return {
            name: graph.top(recent, self.recency_weights, n, exclude)
            for name, graph in self.graphs.items()
        }

    def evidence(
        self,
        recent: np.ndarray,
        candidates: np.ndarray,
        retrieval_scores: np.ndarray,
        retrieval_rank: np.ndarray,
        origins: np.ndarray,
        moments: np.ndarray,
        upcoming: np.ndarray | None = None,
    ) -> np.ndarray:
        """What the ranker reads about each candidate (`EVIDENCE_FEATURES`).

        Args:
            recent: ``[b, m] int64`` latest watches, newest first.
            candidates: ``[b, k] int64`` candidate rows (0 for padding).
            retrieval_scores: ``[b, k] float32`` inner products with the user's query.
            retrieval_rank: ``[b, k] int64`` 0-based position in the index's list, -1 when
                the index did not return it.
            origins: ``[b, k, len(ORIGINS)] bool`` which lists proposed it.
            moments: ``[b] float64`` the ranking moment in seconds (for freshness).
            upcoming: Training lists only: ``[b, u] int64`` the rows this user watched from
                the ranking moment on, in order (the watched video first; 0 past the user's
                last event). The graphs were counted from these very sequences, so every pair
                of a latest watch with one of them (and one watch each from popularity) is
                taken out of the counts and totals: a request never sees its user's future,
                and a ranker trained on counts that include the answer (or that inflate the
                negatives the user watches a little later) learns to misjudge the sources.

        Returns:
            ``[b, k, EVIDENCE_WIDTH] float32``.
        """
        candidates = np.asarray(candidates, dtype=np.int64)
        b, k = candidates.shape
        out = np.zeros((b, k, EVIDENCE_WIDTH), dtype=np.float32)
        weights = self.recency_weights[None, :, None]
        out[..., EVIDENCE_COLUMN["retrieval_score"]] = retrieval_scores
        rank = np.asarray(retrieval_rank)
        out[..., EVIDENCE_COLUMN["retrieval_rank"]] = np.where(
            rank >= 0, 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0
        )
        for name, graph in self.graphs.items():
            counts = graph.counts_between(recent, candidates).astype(np.float64)
            totals = np.broadcast_to(graph.row_totals(recent)[..., None], counts.shape)
            if upcoming is not None and name != "creator":
                reach = 1 if name == "transition" else self.config.covisit_window
                own, own_totals = _own_pairs(recent, candidates, upcoming, reach)
                counts = np.maximum(counts - own, 0.0)
                totals = np.maximum(totals - own_totals[..., None], 0.0)
            probability = counts / np.maximum(totals, 1.0)
            score = (weights * probability).sum(axis=1)
            if name == "transition":
                out[..., EVIDENCE_COLUMN["transition_score"]] = score
                out[..., EVIDENCE_COLUMN["transition_last_count"]] = np.log1p(counts[:, 0, :])
            elif name == "covisit":
                out[..., EVIDENCE_COLUMN["covisit_score"]] = score
                out[..., EVIDENCE_COLUMN["covisit_count"]] = np.log1p(
                    (weights * counts).sum(axis=1)
                )
            else:
                out[..., EVIDENCE_COLUMN["creator_score"]] = (weights * counts).sum(axis=1)
        first = EVIDENCE_COLUMN[f"from_{ORIGINS[0]}"]
        out[..., first : first + len(ORIGINS)] = origins
        held = (candidates >= FIRST_ID_ROW) & (candidates < self.num_rows)
        safe = np.where(held, candidates, 0)
        popularity = self.popularity[safe].astype(np.float64)
        if upcoming is not None:
            own = (candidates[:, :, None] == np.asarray(upcoming)[:, None, :]).sum(axis=2)
            popularity = np.maximum(popularity - own, 0.0)
        out[..., EVIDENCE_COLUMN["popularity"]] = np.where(
            held, np.log1p(popularity) / self._log_top_popularity, 0.0
        )
        uploaded = np.where(held, self.upload_time[safe], np.nan)
        known = np.isfinite(uploaded)
        age_days = np.maximum(np.asarray(moments, np.float64)[:, None] - uploaded, 0.0) / 86_400
        out[..., EVIDENCE_COLUMN["freshness"]] = np.where(
            known, np.log1p(np.where(known, age_days, 0.0)) / FRESHNESS_SCALE, 0.0
        )
        out[..., EVIDENCE_COLUMN["upload_known"]] = known
        return out

    # -- persistence ----------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Writes the graphs, popularity and upload times under ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, graph in self.graphs.items():
            graph.save(directory, name)
        atomic_save_npy(directory / "popularity.npy", self.popularity)
        atomic_save_npy(directory / "upload_time.npy", self.upload_time)
        atomic_write_json(
            directory / STATE_FILE,
            {
                "sources": list(self.graphs),
                "num_rows": self.num_rows,
                "recency_decay": self.recency_decay,
            },
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str], config: CandidatesConfig) -> CandidateSources:
        """Reads sources written by `save` (``config`` says how to read a history).

        Raises:
            BundleError: Missing or inconsistent files.
        """
        directory = Path(directory)
        try:
            state = json.loads((directory / STATE_FILE).read_text("utf-8"))
            popularity = map_npy(directory / "popularity.npy")
            upload_time = map_npy(directory / "upload_time.npy")
        except (OSError, ValueError) as error:
            raise BundleError(
                f"cannot read the candidate sources in {directory}: {error}"
            ) from error
        graphs = {name: ItemGraph.load(directory, name) for name in state.get("sources", [])}
        rows = {len(popularity), len(upload_time), *(g.num_rows for g in graphs.values())}
        if rows != {state.get("num_rows")}:
            raise BundleError(f"candidate sources in {directory} disagree on the number of videos")
        # Bundles written before the decay was fitted read their history with the config's.
        decay = state.get("recency_decay", config.recency_decay)
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 < decay <= 1:
            raise BundleError(
                f"candidate sources in {directory}: recency_decay must be a number in (0, 1], "
                f"got {decay!r}"
            )
        return cls(
            config,
            graphs,
            popularity.astype(np.float32, copy=False),
            upload_time.astype(np.float64, copy=False),
            float(decay),
        )


def _own_pairs(
    recent: np.ndarray, candidates: np.ndarray, upcoming: np.ndarray, reach: int
) -> tuple[np.ndarray, np.ndarray]:
    """How much one user's upcoming watches added to a graph counted ``reach`` positions
    apart: ``(counts [b, m, k] of (latest watch j, candidate) pairs, totals [b, m] out of
    each latest watch)``. Watch ``j`` (``j + 1`` positions before the ranking moment) pairs
    with the upcoming watches ``d < reach - j``."""
    recent = np.asarray(recent, dtype=np.int64)
    upcoming = np.asarray(upcoming, dtype=np.int64)[:, :reach]
    m, u = recent.shape[1], upcoming.shape[1]
    within = np.arange(u)[None, :] < reach - np.arange(m)[:, None]  # [m, u]
    paired = (
        within[None, :, :]
        & (recent[:, :, None] >= FIRST_ID_ROW)
        & (upcoming[:, None, :] >= FIRST_ID_ROW)
        & (recent[:, :, None] != upcoming[:, None, :])
    )  # [b, m, u]
    matches = np.asarray(candidates, dtype=np.int64)[:, None, :] == upcoming[:, :, None]
    counts = np.einsum("bmu,buk->bmk", paired.astype(np.float64), matches.astype(np.float64))
    return counts, paired.sum(axis=2).astype(np.float64)


def _sequence_graph(
    rows: np.ndarray,
    users: np.ndarray,
    window: int,
    num_rows: int,
    config: CandidatesConfig,
    both: bool,
) -> ItemGraph:
    """Pairs of watches of one user at most ``window`` positions apart (later one the target,
    or both ways with ``both``), self-pairs and unknown videos left out."""
    sources, targets = [], []
    for distance in range(1, window + 1):
        first, second = rows[:-distance], rows[distance:]
        keep = (
            (users[:-distance] == users[distance:])
            & (first >= FIRST_ID_ROW)
            & (second >= FIRST_ID_ROW)
            & (first != second)
        )
        sources.append(first[keep])
        targets.append(second[keep])
        if both:
            sources.append(second[keep])
            targets.append(first[keep])
    return ItemGraph.from_pairs(
        np.concatenate(sources) if sources else np.zeros(0, np.int64),
        np.concatenate(targets) if targets else np.zeros(0, np.int64),
        num_rows,
        config.max_neighbours,
    )


def _creator_graph(
    videos: pd.DataFrame, video_vocab: IdVocabulary, config: CandidatesConfig
) -> ItemGraph:
    """One edge per video: to the same creator's next upload (by upload time, then id)."""
    empty = np.zeros(0, np.int64)
    if "creator" not in videos or "upload_time" not in videos:
        return ItemGraph.from_pairs(empty, empty, video_vocab.num_rows, config.max_neighbours)
    table = pd.DataFrame(
        {
            "row": video_vocab.lookup(videos["video_id"].to_numpy(np.int64)),
            "creator": videos["creator"].astype("string").fillna(""),
            "uploaded": pd.to_numeric(videos["upload_time"], errors="coerce"),
            "video_id": videos["video_id"].to_numpy(np.int64),
        }
    )
    table = table[(table["row"] >= FIRST_ID_ROW) & (table["creator"] != "")]
    table = table[table["uploaded"].notna()].sort_values(["creator", "uploaded", "video_id"])
    same = table["creator"].to_numpy()[1:] == table["creator"].to_numpy()[:-1]
    ordered = table["row"].to_numpy(np.int64)
    return ItemGraph.from_pairs(
        ordered[:-1][same], ordered[1:][same], video_vocab.num_rows, config.max_neighbours
    )


def order_scores(evidence: np.ndarray, order: str) -> np.ndarray:
    """Scores that put candidates in retrieval's order or in one source's (ties broken by the
    retrieval score), from their evidence.

    Args:
        evidence: ``[..., k, EVIDENCE_WIDTH] float32``.
        order: ``"retrieval"`` or a source name.

    Returns:
        ``[..., k] float64``, higher first.

    Raises:
        ValueError: Any other order (the two-stage order is the ranker's own scores).
    """
    retrieval = evidence[..., EVIDENCE_COLUMN["retrieval_score"]].astype(np.float64)
    if order == RETRIEVAL:
        return retrieval
    if order not in CANDIDATE_SOURCES:
        raise ValueError(f"no evidence order {order!r}; choose from {SERVING_ORDERS[1:]}")
    # Source scores are sums of conditional probabilities; a millionth of an inner product
    # orders the candidates a source scores alike (most score 0) without outweighing it.
    return evidence[..., EVIDENCE_COLUMN[f"{order}_score"]].astype(np.float64) + 1e-6 * retrieval
