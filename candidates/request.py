"""The candidate sources at the shapes of one request: proposals, merge and evidence for one
user, with the same answers as the batched functions (`CandidateSources.propose`,
`merge_candidates`, `CandidateSources.evidence`) and a fraction of their numpy calls.

At one user's shapes (300 candidates, five latest watches) the request path's cost is the
number of numpy calls, not arithmetic: the batched functions build ``[b, ...]`` index
arithmetic that a single list does not need. `RequestSources` wraps one bundle's sources with
what every request reads precomputed, and answers with 1-D arrays from the compiled loops of
`candidates.kernels`. Evaluation and training keep the batched functions; tests check the two
agree exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from candidates import kernels
from candidates.sources import (
    EVIDENCE_COLUMN,
    EVIDENCE_WIDTH,
    FRESHNESS_SCALE,
    ORIGINS,
    CandidateSources,
)
from core.vocab import FIRST_ID_ROW

_BITS = 1 << np.arange(len(ORIGINS), dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class RequestCandidates:
    """One user's merged candidates (the filled slots of `merge_candidates`' one list).

    Attributes:
        rows: ``[k] int64`` candidate rows, in slot order.
        origins: ``[k, len(ORIGINS)] bool``: proposed by the index, then by each source.
        retrieval_rank: ``[k] int64`` 0-based position in the index's list, -1 if absent.
    """

    rows: np.ndarray
    origins: np.ndarray
    retrieval_rank: np.ndarray


def merge_one_list(
    index_rows: np.ndarray,
    proposals: dict[str, tuple[np.ndarray, np.ndarray]],
    num_slots: int,
    source_slots: int,
) -> RequestCandidates:
    """`merge_candidates` for one list: the index's head, then the sources' lists
    interleaved by rank (at most ``source_slots`` new videos), then the index's tail.

    Args:
        index_rows: ``[n] int64`` the index's candidates, best first (0 for none).
        proposals: Source name to ``(rows [p] int64, scores [p])``, best first (0 for none);
            names from `ORIGINS`, every list of the same length.
        num_slots: ``N``.
        source_slots: Most slots the sources may add.

    Returns:
        The filled slots, equal to ``merge_candidates(index_rows[None], ...)``'s valid ones.
    """
    names = [name for name in ORIGINS[1:] if name in proposals]
    if names:
        proposed = np.stack([proposals[name][0] for name in names], axis=1).astype(np.int64)
    else:
        proposed = np.zeros((0, 0), dtype=np.int64)
    tags = np.array([ORIGINS.index(name) for name in names], dtype=np.int64)
    rows, bits, rank = kernels.merge_one_list(
        np.asarray(index_rows, dtype=np.int64), proposed, tags, int(num_slots), int(source_slots)
    )
    return RequestCandidates(rows, (bits[:, None] & _BITS) != 0, rank)


class RequestSources:
    """One bundle's candidate sources answering one request at a time.

    Holds what every request reads precomputed: popularity as the ranker reads it and the
    upload time, side by side per row (``[R, 2] float64``, 16 MB at a million videos), so a
    candidate's per-video facts are one gather.

    Args:
        sources: The bundle's sources.
    """

    def __init__(self, sources: CandidateSources) -> None:
        self.sources = sources
        self.config = sources.config
        self.graphs = sources.graphs
        self.num_rows = sources.num_rows
        self._weights = sources.recency_weights
        popularity = np.log1p(sources.popularity.astype(np.float64))
        popularity /= np.log1p(max(float(sources.popularity.max(initial=0)), 1))
        # Rows 0 and 1 (padding, OOV) read as unknown, as `CandidateSources.evidence` does.
        facts = np.column_stack([popularity, sources.upload_time])
        facts[:FIRST_ID_ROW] = (0.0, np.nan)
        self._facts = facts

    def recent(self, history_rows: np.ndarray) -> np.ndarray:
        """``[m] int64`` the latest known watches of ``history_rows [h]`` (oldest first),
        newest first, 0 where the history is shorter (`CandidateSources.recent`)."""
        m = self.config.recent_watches
        out = np.zeros(m, dtype=np.int64)
        latest = np.asarray(history_rows, dtype=np.int64)[::-1][:m]
        out[: len(latest)] = latest
        out[out < FIRST_ID_ROW] = 0
        return out

    def propose(
        self, recent: np.ndarray, excluded_rows: np.ndarray
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each source's ``per_source`` best rows and scores for one user, never a row of
        ``excluded_rows`` (`CandidateSources.propose` for one list, 1-D).

        Args:
            recent: ``[m] int64`` latest watches, newest first.
            excluded_rows: ``[x] int64`` rows never to propose, sorted ascending.
        """
        n = self.config.per_source
        out = {}
        for name, graph in self.graphs.items():
            rows, scores = graph.top_of_one(recent, self._weights, n, excluded_rows)
            out[name] = (rows, scores)
        return out

    def evidence(
        self,
        recent: np.ndarray,
        candidates: RequestCandidates,
        retrieval_scores: np.ndarray,
        now: float,
    ) -> np.ndarray:
        """``[k, EVIDENCE_WIDTH] float32``: `CandidateSources.evidence` of one list.

        Args:
            recent: ``[m] int64`` latest watches, newest first.
            candidates: The merged candidates.
            retrieval_scores: ``[k] float32`` their inner products with the query.
            now: The request time in seconds (for freshness).
        """
        rows = candidates.rows
        out = np.zeros((len(rows), EVIDENCE_WIDTH), dtype=np.float32)
        out[:, EVIDENCE_COLUMN["retrieval_score"]] = retrieval_scores
        rank = candidates.retrieval_rank
        out[:, EVIDENCE_COLUMN["retrieval_rank"]] = np.where(
            rank >= 0, 1.0 / np.log2(np.maximum(rank, 0) + 2.0), 0.0
        )
        for name, graph in self.graphs.items():
            score, weighted_count, newest_count = kernels.edge_evidence(
                graph.indptr,
                graph.columns,
                graph.counts,
                graph.totals,
                recent,
                self._weights,
                rows,
            )
            if name == "transition":
                out[:, EVIDENCE_COLUMN["transition_score"]] = score
                out[:, EVIDENCE_COLUMN["transition_last_count"]] = np.log1p(newest_count)
            elif name == "covisit":
                out[:, EVIDENCE_COLUMN["covisit_score"]] = score
                out[:, EVIDENCE_COLUMN["covisit_count"]] = np.log1p(weighted_count)
            else:
                out[:, EVIDENCE_COLUMN["creator_score"]] = weighted_count
        first = EVIDENCE_COLUMN[f"from_{ORIGINS[0]}"]
        out[:, first : first + len(ORIGINS)] = candidates.origins
        held = rows < self.num_rows  # merged rows are real videos: only uploads are past
        facts = np.take(self._facts, np.where(held, rows, 0), axis=0)
        out[:, EVIDENCE_COLUMN["popularity"]] = facts[:, 0]
        uploaded = facts[:, 1]
        known = np.isfinite(uploaded)
        age_days = np.maximum(now - uploaded, 0.0) / 86_400
        out[:, EVIDENCE_COLUMN["freshness"]] = np.where(
            known, np.log1p(np.where(known, age_days, 0.0)) / FRESHNESS_SCALE, 0.0
        )
        out[:, EVIDENCE_COLUMN["upload_known"]] = known
        return out

    def followed_watches(self, name: str, recent: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``[k] int64``: the latest watch each of ``rows [k]`` follows most strongly in
        source ``name`` (its edge's conditional probability; the newest on ties), -1 where
        none of ``recent [m]`` leads to it."""
        graph = self.graphs[name]
        return kernels.strongest_edge(
            graph.indptr, graph.columns, graph.counts, graph.totals, recent, rows
        )
