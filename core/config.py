"""Configuration: frozen dataclasses validated on construction and passed explicitly.

Each section validates itself in ``__post_init__`` and names the field to change in its error.
`VidrecConfig` groups the sections; `config_from_dict` / `config_to_dict` round-trip it through
JSON (``config.json`` in a bundle), refusing unknown keys so that typos do not pass silently.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import numbers
import re
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from core.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def require(condition: bool, field: str, message: str) -> None:
    """Raises `ConfigError` naming ``field`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


def require_at_least(config: Any, section: str, minimums: dict[str, float]) -> None:
    """Raises `ConfigError` for the first field of ``config`` below its minimum.

    Args:
        config: A config dataclass.
        section: Its section name, the prefix of the field named in the error.
        minimums: Smallest allowed value per field name.
    """
    for name, minimum in minimums.items():
        value = getattr(config, name)
        require(value >= minimum, f"{section}.{name}", f"must be >= {minimum:g}, got {value}")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the synthetic video platform (`pipelines.data.synthetic`).

    Attributes:
        num_users: Users with at least one event.
        num_videos: Videos in the catalogue.
        num_events: Watch events in total (approximately; each user gets at least 5).
        num_categories: Top-level categories; each video has one main category and maybe a second.
        num_creators: Channels; each creator publishes mostly in one category, in series.
        days: Span of the event log in days; interests drift and videos are uploaded over it.
        seed: Seed of every random draw.
    """

    num_users: int = 6_000
    num_videos: int = 3_000
    num_events: int = 300_000
    num_categories: int = 24
    num_creators: int = 400
    days: int = 60
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.num_users >= 1, "synthetic.num_users", f"must be >= 1, got {self.num_users}")
        require(
            self.num_videos >= 2, "synthetic.num_videos", f"must be >= 2, got {self.num_videos}"
        )
        require(
            self.num_events >= 5 * self.num_users,
            "synthetic.num_events",
            f"must be at least 5 per user ({5 * self.num_users}), got {self.num_events}",
        )
        require(
            1 <= self.num_categories <= self.num_videos,
            "synthetic.num_categories",
            f"must be in [1, num_videos], got {self.num_categories}",
        )
        require(
            1 <= self.num_creators <= self.num_videos,
            "synthetic.num_creators",
            f"must be in [1, num_videos], got {self.num_creators}",
        )
        require(self.days >= 1, "synthetic.days", f"must be >= 1, got {self.days}")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Inputs shared by both models (`core.features`).

    Attributes:
        history_length: Most recent watches a model reads.
        max_categories: Categories kept per video.
        max_tokens: Title and tag tokens kept per video.
        token_hash_buckets: Hash buckets for title and tag tokens.
        use_content_features: Feed categories, tokens, year or upload time, duration and creator
            to the video tower beside the id, so unwatched videos get useful embeddings.
        use_user_features: Feed the users table's attributes to the user tower.
        use_user_id: Add a user-id embedding (with an OOV row) to the user tower.
    """

    history_length: int = 50
    max_categories: int = 4
    max_tokens: int = 16
    token_hash_buckets: int = 20_000
    use_content_features: bool = True
    use_user_features: bool = True
    use_user_id: bool = False

    def __post_init__(self) -> None:
        names = ("history_length", "max_categories", "max_tokens", "token_hash_buckets")
        require_at_least(self, "features", dict.fromkeys(names, 1))


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How a model trains: the fields `RetrievalConfig` and `RankingConfig` share.

    Each of the two sets its own defaults for ``batch_size``, ``max_epochs`` and ``patience``.

    Attributes:
        batch_size: Training examples per step (windows of a user's history for retrieval).
        learning_rate: Adam learning rate.
        sparse_table_rows: Embedding tables with more rows than this (video and user ids of a
            large catalogue) are trained with Adagrad, whose sparse update touches only the
            rows of a batch; Keras' Adam rewrites the whole table every step.
        sparse_learning_rate: Adagrad learning rate of those tables.
        max_epochs: Upper bound on epochs; early stopping usually ends sooner.
        patience: Epochs without a better validation metric before stopping (Recall@N for
            retrieval, NDCG@10 for ranking).
        max_train_seconds: Wall-clock budget for training; 0 means none.
        seed: Seed of initialisation, sampling and shuffling.
    """

    batch_size: int = 32
    learning_rate: float = 1e-3
    sparse_table_rows: int = 100_000
    sparse_learning_rate: float = 0.05
    max_epochs: int = 50
    patience: int = 3
    max_train_seconds: float = 0.0
    seed: int = 0

    def _check_training(self, section: str, min_batch_size: int) -> None:
        """Checks the shared fields, naming them under ``section``.

        Raises:
            ConfigError: A field out of range.
        """
        minimums = {"batch_size": min_batch_size, "max_epochs": 1, "patience": 1}
        require_at_least(self, section, {**minimums, "sparse_table_rows": 0})
        require(self.learning_rate > 0.0, f"{section}.learning_rate", "must be > 0")
        require(self.sparse_learning_rate > 0.0, f"{section}.sparse_learning_rate", "must be > 0")
        require(self.max_train_seconds >= 0.0, f"{section}.max_train_seconds", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class RetrievalConfig(TrainingConfig):
    """Two-tower retrieval model and its training (`retrieval`).

    The training fields (``batch_size``, ``learning_rate``, ``max_epochs``, ...) are
    `TrainingConfig`'s; ``batch_size`` counts windows and must be >= 2 (in-batch negatives).

    Attributes:
        embedding_dim: Output dimension of both towers (the index dimension).
        num_blocks: Causal self-attention blocks in the history encoder.
        num_heads: Attention heads per block.
        dropout: Dropout rate inside the towers.
        id_dropout: Training-time probability of hiding a video's id from the video tower, so
            its content path learns to embed videos nobody has watched yet.
        temperature: Softmax temperature on cosine similarities.
        logq_correction: Subtract log sampling probability (item frequency) from in-batch logits.
        remove_accidental_hits: Do not treat another example's positive as a negative when it is
            the same video.
        extra_negatives: Videos drawn uniformly from the catalogue per batch, shared by all
            queries as extra negatives (mixed negative sampling); 0 for pure in-batch softmax.
        window_stride: Positions between consecutive training windows of a user; a target is
            trained once, in the most recent window that shows it at least
            ``history_length - window_stride`` earlier watches. Equal to ``history_length``
            (no overlap) is fastest; smaller gives long histories to more targets. The default,
            half the default window, shows every target at least 25 earlier watches, closer to
            a request's 50. An epoch costs twice as much; what it bought is measured in
            docs/design.md §4 step 2.
        validation_recall_at: N of the validation Recall@N used for early stopping.
    """

    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    id_dropout: float = 0.1
    temperature: float = 0.05
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    extra_negatives: int = 1024
    window_stride: int = 25
    validation_recall_at: int = 100
    batch_size: int = 32
    max_epochs: int = 200
    patience: int = 5

    def __post_init__(self) -> None:
        f = "retrieval"
        require_at_least(self, f, {"embedding_dim": 2, "num_blocks": 1})
        require(
            self.embedding_dim % self.num_heads == 0 if self.num_heads > 0 else False,
            f"{f}.num_heads",
            f"must be >= 1 and divide embedding_dim={self.embedding_dim}, got {self.num_heads}",
        )
        require(0.0 <= self.dropout < 1.0, f"{f}.dropout", f"must be in [0, 1), got {self.dropout}")
        require(
            0.0 <= self.id_dropout < 1.0,
            f"{f}.id_dropout",
            f"must be in [0, 1), got {self.id_dropout}",
        )
        require(self.temperature > 0.0, f"{f}.temperature", f"must be > 0, got {self.temperature}")
        require_at_least(
            self, f, {"extra_negatives": 0, "window_stride": 1, "validation_recall_at": 1}
        )
        self._check_training(f, min_batch_size=2)


@dataclasses.dataclass(frozen=True)
class RankingConfig(TrainingConfig):
    """Multi-head-attention ranker and its training (`ranking`).

    The training fields (``batch_size``, ``learning_rate``, ``max_epochs``, ...) are
    `TrainingConfig`'s.

    Attributes:
        dim: Width of the ranker's video and history representations.
        history_length: Most recent watches the ranker reads (at most
            ``features.history_length``; the retrieval score already summarises the rest).
        num_heads: Heads of the history self-attention and of the candidate-to-history
            (target) attention.
        history_blocks: Self-attention blocks over the history before target attention.
        hidden_units: Widths of the MLP over each candidate.
        dropout: Dropout rate.
        candidates: Videos retrieval hands to the ranker per request (N).
        hard_negatives: Negatives per training example drawn from retrieval's top
            ``candidates`` for the example's own history (what the ranker must order).
        random_negatives: Negatives per example drawn uniformly from the catalogue.
        engagement_weight: Serving score is ``log p(watch) + engagement_weight * log
            engagement``; 0 ranks by the probability of being watched next alone.
        engagement_loss_weight: Weight of the engagement head's loss beside the watch head's.
        max_examples: Most recent training examples kept (bounds memory and time).
        examples_per_user: Each user's latest training examples kept (0: all of them). A
            request ranks for a user with their whole history behind them; early examples
            (short histories, evidence counted without most of the user's pairs) look
            unlike that and, for heavy users, outnumber everyone else's. Measured in
            docs/design.md §4 (train, step 4).
    """

    dim: int = 32
    history_length: int = 20
    num_heads: int = 2
    history_blocks: int = 1
    hidden_units: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    candidates: int = 300
    hard_negatives: int = 15
    random_negatives: int = 4
    engagement_weight: float = 0.2
    engagement_loss_weight: float = 0.5
    max_examples: int = 1_000_000
    examples_per_user: int = 20
    batch_size: int = 256
    max_epochs: int = 50
    patience: int = 3

    def __post_init__(self) -> None:
        f = "ranking"
        require_at_least(self, f, {"dim": 2, "history_length": 1})
        require(
            self.num_heads >= 1 and self.dim % self.num_heads == 0,
            f"{f}.num_heads",
            f"must be >= 1 and divide dim={self.dim}, got {self.num_heads}",
        )
        require(self.history_blocks >= 0, f"{f}.history_blocks", "must be >= 0")
        require(
            len(self.hidden_units) >= 1 and all(u >= 1 for u in self.hidden_units),
            f"{f}.hidden_units",
            f"must be one or more positive widths, got {self.hidden_units}",
        )
        require(0.0 <= self.dropout < 1.0, f"{f}.dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.candidates >= 1, f"{f}.candidates", f"must be >= 1, got {self.candidates}")
        require(
            self.hard_negatives + self.random_negatives >= 1,
            f"{f}.hard_negatives",
            "hard_negatives + random_negatives must be >= 1",
        )
        require(
            self.hard_negatives >= 0 and self.random_negatives >= 0,
            f"{f}.hard_negatives",
            "negative counts must be >= 0",
        )
        minimums = {
            "engagement_weight": 0,
            "engagement_loss_weight": 0,
            "max_examples": 1,
            "examples_per_user": 0,
        }
        require_at_least(self, f, minimums)
        self._check_training(f, min_batch_size=1)


# Item-to-item candidate sources (`candidates.sources`), in the order their lists are merged.
CANDIDATE_SOURCES: tuple[str, ...] = ("transition", "covisit", "creator")


@dataclasses.dataclass(frozen=True)
class CandidatesConfig:
    """Item-to-item candidate sources beside the two-tower index (`candidates`).

    The train job counts them from the training events and stores them in the bundle; at
    request time they read the user's latest watches (docs/design.md §3).

    Attributes:
        sources: Which sources to build and merge, from `CANDIDATE_SOURCES`: ``transition``
            (what was watched right after each video), ``covisit`` (watched within
            ``covisit_window`` positions of each other, either order) and ``creator`` (the
            same creator's next upload).
        recent_watches: The latest watches a source reads; the most recent weighs most.
        recency_decay: Weight of each older watch relative to the next newer one, unless
            ``recency_decay_choices`` are given.
        recency_decay_choices: Decays the train job compares on its validation cases (the
            sources' own orders); the best is kept in the bundle (``candidates/sources.json``)
            and read by every request. How far back the next watch still depends on differs
            between platforms (a series binge hangs on the last episode, a film catalogue on
            the last few), so it is measured rather than set. Empty: ``recency_decay``.
        per_source: Candidates each source proposes.
        source_share: Of the ranker's N candidate slots, the share the sources may take
            (`source_slots`); the index fills the rest, so retrieval alone still brings at
            least the other ``1 - source_share``.
        max_neighbours: Strongest neighbours kept per video and source (bounds the tables:
            at most 12 bytes per edge, 2.4 GB per source at a million dense rows).
        covisit_window: Positions apart within which two watches of a user co-visit.
    """

    sources: tuple[str, ...] = CANDIDATE_SOURCES
    recent_watches: int = 5
    recency_decay: float = 0.5
    recency_decay_choices: tuple[float, ...] = (0.3, 0.5, 0.7, 0.85)
    per_source: int = 100
    source_share: float = 1 / 3
    max_neighbours: int = 200
    covisit_window: int = 5

    def source_slots(self, num_slots: int) -> int:
        """How many of ``num_slots`` candidate slots the sources may take."""
        return int(num_slots * self.source_share)

    def __post_init__(self) -> None:
        f = "candidates"
        unknown = sorted(set(self.sources) - set(CANDIDATE_SOURCES))
        require(
            not unknown, f"{f}.sources", f"unknown {unknown}; choose from {list(CANDIDATE_SOURCES)}"
        )
        require(len(set(self.sources)) == len(self.sources), f"{f}.sources", "lists a source twice")
        require_at_least(
            self,
            f,
            {"recent_watches": 1, "per_source": 1, "max_neighbours": 1, "covisit_window": 1},
        )
        require(
            0.0 <= self.source_share < 1.0,
            f"{f}.source_share",
            f"must be in [0, 1), got {self.source_share}",
        )
        require(
            0.0 < self.recency_decay <= 1.0,
            f"{f}.recency_decay",
            f"must be in (0, 1], got {self.recency_decay}",
        )
        outside = [decay for decay in self.recency_decay_choices if not 0.0 < decay <= 1.0]
        require(not outside, f"{f}.recency_decay_choices", f"must be in (0, 1], got {outside}")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Offline evaluation (`pipelines.jobs.evaluate`).

    Attributes:
        ks: Cut-offs for HR@K and NDCG@K of the final list.
        candidate_ns: Cut-offs for Recall@N of the retrieval candidate list.
        diversity_k: Length of the lists whose coverage and category diversity are reported.
        baselines: Baselines run beside the model on the same split.
    """

    ks: tuple[int, ...] = (10,)
    candidate_ns: tuple[int, ...] = (100, 300)
    diversity_k: int = 10
    baselines: tuple[str, ...] = ("most_popular", "item_knn", "ease", "transition")

    def __post_init__(self) -> None:
        require(all(k >= 1 for k in self.ks) and self.ks, "evaluation.ks", "must be positive ints")
        require(all(n >= 1 for n in self.candidate_ns), "evaluation.candidate_ns", "must be >= 1")
        require(self.diversity_k >= 1, "evaluation.diversity_k", "must be >= 1")
        known = {"most_popular", "item_knn", "ease", "transition"}
        unknown = sorted(set(self.baselines) - known)
        require(
            not unknown, "evaluation.baselines", f"unknown {unknown}; choose from {sorted(known)}"
        )


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """Candidate index over the video embeddings (`index`).

    The kind and every search parameter come from here; `index` hard-codes none of them.

    Attributes:
        kind: ``"auto"``: exact search up to ``flat_max_videos``, above that the fastest kind
            of ``candidate_kinds`` (each built and tuned, the lowest single-query p50 at the
            recall target kept). ``"flat"`` (exact), ``"hnsw"``, ``"hnsw_sq"`` (HNSW over
            8-bit scalar-quantised vectors, refine stage), ``"ivf_sq"`` (IVF over 8-bit
            scalar-quantised vectors, refine stage) or ``"ivf_hnsw_pq"`` (IVF with an HNSW coarse
            quantizer, 4-bit fast-scan PQ and a refine stage) force one.
        candidate_kinds: Kinds ``auto`` builds and compares above ``flat_max_videos``; empty
            means the size rule alone (HNSW up to ``hnsw_max_videos``, IVF-HNSW-PQ beyond).
        flat_max_videos: ``auto`` uses exact search up to this many videos.
        hnsw_max_videos: ``auto`` uses HNSW up to this many videos (if it fits the budget),
            IVF-PQ beyond.
        memory_budget_mb: Upper bound on the index's estimated resident size; ``auto`` falls back
            to IVF-PQ when HNSW would not fit, and a build whose kind cannot fit fails.
        normalize: L2-normalise embeddings and queries so inner product is cosine similarity.
        hnsw_m: Graph degree of HNSW (``HNSW<m>``).
        hnsw_ef_construction: Candidate-list size while inserting into HNSW.
        hnsw_ef_search: efSearch values tried, smallest first, when tuning HNSW.
        query_aware: Build the HNSW graph in coordinates fitted to the tuning queries (scores
            stay exact; see `index.query_aware`): a trained user tower's queries sit apart from
            the videos, and a graph over the raw vectors loses recall on them.
        query_aware_min_shift: The query-aware graph is used only when the queries' second
            moment differs from the videos' by at least this much (relative Frobenius norm);
            queries distributed like the videos are better served by the raw graph.
        query_aware_shrinkage: Share of the mean eigenvalue of the queries' second moment added
            to every eigenvalue, so directions the queries rarely use keep some weight.
        ivf_nlist: Inverted lists of IVF; 0 derives it as ``ivf_nlist_per_sqrt * sqrt(n)``
            (capped so that every list gets ``ivf_min_points_per_list`` training points).
        ivf_nlist_per_sqrt: Factor of the derived nlist (8: at 1M, 8,000 lists made ``ivf_sq``
            faster than 4,000 on both benchmark sets, docs/design.md §9).
        ivf_min_points_per_list: Fewest vectors per list the derived nlist allows.
        ivf_train_points_per_list: Training sample size per list for k-means and PQ.
        ivf_quantizer_hnsw_m: Graph degree of the HNSW coarse quantizer over the centroids.
        ivf_quantizer_ef_factor: Coarse quantizer efSearch as a multiple of nprobe.
        ivf_nprobe: nprobe values tried, smallest first, when tuning IVF.
        pq_m: PQ sub-quantizers; 0 means one per dimension. Must divide the embedding dim.
        pq_nbits: Bits per PQ code; fast-scan PQ supports 4 only.
        refine: Re-ranking stage of ``ivf_hnsw_pq``, ``ivf_sq`` and ``hnsw_sq``: ``"flat"``
            (exact float vectors), ``"sq8"`` (means ``"flat"`` over SQ8 codes), ``"fp16"`` or
            ``"none"``.
        refine_k_factor: k_factor values (candidates re-ranked per result) tried when tuning.
        target_recall: Recall@``recall_k`` against exact search the tuned index must reach on
            held-out queries; a build that cannot reach it fails.
        recall_k: K of the tuned recall@K.
        recall_confidence_z: An operating point counts as reaching the target only when its mean
            recall minus this many standard errors (over the tuning queries) does; 0 compares
            the mean alone.
        query_recall_floor: A tuning query whose own recall@K is below this has failed (e.g. an
            HNSW search trapped outside the query's cluster returns nothing relevant).
        max_failed_queries: Largest fraction of failed tuning queries an operating point may
            have; a good mean can hide users who get no relevant candidates at all.
        tuning_queries: Held-out queries used for tuning (sampled down to this many).
        latency_queries: Single queries timed for the p50/p99 in the report.
        single_query_threads: OpenMP threads of a one-query search (1: request threads do not
            fight over cores).
        search_threads: OpenMP threads of a batch search; 0 means all cores.
        build_threads: OpenMP threads while training and adding; 0 means all cores.
        add_batch_size: Vectors added per chunk (one progress log line per chunk).
        seed: Seed of training samples, query sampling and HNSW levels.
    """

    kind: str = "auto"
    candidate_kinds: tuple[str, ...] = ("ivf_sq", "hnsw")
    flat_max_videos: int = 20_000
    hnsw_max_videos: int = 3_000_000
    memory_budget_mb: int = 2_048
    normalize: bool = True
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: tuple[int, ...] = (16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
    query_aware: bool = True
    query_aware_min_shift: float = 1.0
    query_aware_shrinkage: float = 0.1
    ivf_nlist: int = 0
    ivf_nlist_per_sqrt: float = 8.0
    ivf_min_points_per_list: int = 39
    ivf_train_points_per_list: int = 64
    ivf_quantizer_hnsw_m: int = 32
    ivf_quantizer_ef_factor: float = 2.0
    ivf_nprobe: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
    pq_m: int = 0
    pq_nbits: int = 4
    refine: str = "flat"
    refine_k_factor: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    target_recall: float = 0.95
    recall_k: int = 100
    recall_confidence_z: float = 2.0
    query_recall_floor: float = 0.5
    max_failed_queries: float = 0.005
    tuning_queries: int = 1_000
    latency_queries: int = 300
    single_query_threads: int = 1
    search_threads: int = 0
    build_threads: int = 0
    add_batch_size: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        f = "index"
        kinds = ("auto", "flat", "hnsw", "hnsw_sq", "ivf_sq", "ivf_hnsw_pq")
        require(self.kind in kinds, f"{f}.kind", f"must be one of {list(kinds)}, got {self.kind!r}")
        require(
            all(k in kinds[2:] for k in self.candidate_kinds)
            and len(set(self.candidate_kinds)) == len(self.candidate_kinds),
            f"{f}.candidate_kinds",
            f"must be distinct kinds of {list(kinds[2:])}, got {list(self.candidate_kinds)!r}",
        )
        require(self.flat_max_videos >= 0, f"{f}.flat_max_videos", "must be >= 0")
        require(
            self.hnsw_max_videos >= self.flat_max_videos,
            f"{f}.hnsw_max_videos",
            f"must be >= flat_max_videos={self.flat_max_videos}, got {self.hnsw_max_videos}",
        )
        require(self.memory_budget_mb > 0, f"{f}.memory_budget_mb", "must be > 0")
        require(2 <= self.hnsw_m <= 256, f"{f}.hnsw_m", f"must be in [2, 256], got {self.hnsw_m}")
        require(self.hnsw_ef_construction >= 1, f"{f}.hnsw_ef_construction", "must be >= 1")
        require(
            self.query_aware_min_shift >= 0,
            f"{f}.query_aware_min_shift",
            f"must be >= 0, got {self.query_aware_min_shift}",
        )
        require(
            self.query_aware_shrinkage > 0,
            f"{f}.query_aware_shrinkage",
            f"must be > 0, got {self.query_aware_shrinkage}",
        )
        for name in ("hnsw_ef_search", "ivf_nprobe"):
            values = getattr(self, name)
            require(
                bool(values)
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values),
                f"{f}.{name}",
                f"must be a non-empty list of ints >= 1, got {values!r}",
            )
        require(self.ivf_nlist >= 0, f"{f}.ivf_nlist", "must be >= 0 (0 derives it from the size)")
        require(self.ivf_nlist_per_sqrt > 0, f"{f}.ivf_nlist_per_sqrt", "must be > 0")
        require(self.ivf_min_points_per_list >= 1, f"{f}.ivf_min_points_per_list", "must be >= 1")
        require(
            self.ivf_train_points_per_list >= self.ivf_min_points_per_list,
            f"{f}.ivf_train_points_per_list",
            f"must be >= ivf_min_points_per_list={self.ivf_min_points_per_list}",
        )
        require(self.ivf_quantizer_hnsw_m >= 2, f"{f}.ivf_quantizer_hnsw_m", "must be >= 2")
        require(self.ivf_quantizer_ef_factor >= 1.0, f"{f}.ivf_quantizer_ef_factor", "must be >= 1")
        require(self.pq_m >= 0, f"{f}.pq_m", "must be >= 0 (0 means one per dimension)")
        require(
            self.pq_nbits == 4,
            f"{f}.pq_nbits",
            f"fast-scan PQ codes are 4-bit; must be 4, got {self.pq_nbits}",
        )
        refines = ("flat", "sq8", "fp16", "none")
        require(
            self.refine in refines,
            f"{f}.refine",
            f"must be one of {list(refines)}, got {self.refine!r}",
        )
        require(
            bool(self.refine_k_factor) and all(float(v) >= 1.0 for v in self.refine_k_factor),
            f"{f}.refine_k_factor",
            f"must be a non-empty list of numbers >= 1, got {self.refine_k_factor!r}",
        )
        require(
            0.0 < self.target_recall <= 1.0,
            f"{f}.target_recall",
            f"must be in (0, 1], got {self.target_recall}",
        )
        require(self.recall_k >= 1, f"{f}.recall_k", f"must be >= 1, got {self.recall_k}")
        require(self.recall_confidence_z >= 0, f"{f}.recall_confidence_z", "must be >= 0")
        require(
            0.0 <= self.query_recall_floor <= 1.0, f"{f}.query_recall_floor", "must be in [0, 1]"
        )
        require(
            0.0 <= self.max_failed_queries <= 1.0, f"{f}.max_failed_queries", "must be in [0, 1]"
        )
        require(self.tuning_queries >= 1, f"{f}.tuning_queries", "must be >= 1")
        require(self.latency_queries >= 1, f"{f}.latency_queries", "must be >= 1")
        require(self.single_query_threads >= 1, f"{f}.single_query_threads", "must be >= 1")
        require(self.search_threads >= 0, f"{f}.search_threads", "must be >= 0 (0: all cores)")
        require(self.build_threads >= 0, f"{f}.build_threads", "must be >= 0 (0: all cores)")
        require(self.add_batch_size >= 1, f"{f}.add_batch_size", "must be >= 1")


# The longest feedback event the API accepts, serialised with room for whitespace: 19-digit
# ids, the longest event name, 17-digit floats and every field present is 165 bytes compact.
FEEDBACK_EVENT_BYTES = 256
BODY_OVERHEAD_BYTES = 1_024


@dataclasses.dataclass(frozen=True)
class ServingConfig:
    """The online recommender and its HTTP API (`pipelines.serve`, `pipelines.serving.app`).

    Attributes:
        candidates: Videos fetched from the index for the ranker (N).
        default_k: Recommendations returned when a request does not say.
        max_k: Largest ``k`` a request may ask for.
        max_request_history: Longest history a request may carry.
        max_exclude: Most ids a request may exclude.
        diversity: ``"category_cap"`` (at most ``category_cap`` videos per main category in
            the returned list while other candidates remain; the deferred ones fill the slots
            left over), ``"mmr"`` (maximal marginal relevance on video embeddings) or ``"none"``.
        category_cap: Per-category limit of ``category_cap`` diversity.
        mmr_lambda: Relevance weight of MMR in ``[0, 1]`` (1 ignores similarity).
        because: History videos named per recommendation (from the ranker's attention).
        popularity_days: Window of "recent popularity" for cold-start lists.
        reload_poll_seconds: How often the server checks ``CURRENT`` for a new bundle (0: only
            on admin reload).
        max_body_bytes: Largest request body accepted; must hold a full feedback batch
            (`FEEDBACK_EVENT_BYTES` per event).
        max_feedback_batch: Most events one ``POST /feedback`` may carry.
        host: Interface ``vidrec serve`` binds.
        port: Port ``vidrec serve`` binds.
        api_key_env: Environment variable holding the admin key(s), comma-separated: they
            allow catalogue writes, reloads and feedback.
        ingest_key_env: Environment variable holding the ingest key(s), comma-separated: they
            allow ``POST /feedback`` only.
        api_keys_file: File of ``<admin|ingest> <key>`` lines, read again when it changes
            (rotate a key by adding the new one, moving clients, then removing the old one).
            When no key is configured anywhere every endpoint is open (bind to loopback then).
        events_url: The event store (`pipelines.serving.events`): a SQLite file (a path or
            ``sqlite:///relative.db``, ``sqlite:////absolute.db``) or a shared PostgreSQL
            database (``postgresql://user@host:port/dbname``). ``--events`` and the
            ``VIDREC_EVENTS_URL`` environment variable take precedence; by default
            ``<artifacts>/events.db``. Keep passwords out of it (``~/.pgpass``,
            ``PGPASSWORD``): a bundle's ``config.json`` records the configuration it was
            trained with.
        events_synchronous: SQLite ``synchronous`` of the event store (``FULL`` or ``NORMAL``).
        events_pool_size: PostgreSQL: most connections each server process opens.
        events_connect_timeout_seconds: PostgreSQL: longest wait to connect, or for a pooled
            connection (libpq counts whole seconds).
        events_statement_timeout_seconds: PostgreSQL: longest a statement of a server may run
            (a lock wait included); past it the store counts as unavailable for a moment.
        events_retry_seconds: PostgreSQL: while the store is unavailable, how often a server
            tries to reconnect; meanwhile recommendations come from the bundle alone and
            writes answer 503.
        events_job_timeout_seconds: PostgreSQL: longest a statement of the retrain or of
            ``vidrec events`` may run (bulk reads, checks, migration).
        request_runtime: How the request path runs the user tower and the ranker:
            ``"litert"`` (converted when the bundle loads; the fastest on a CPU), ``"xla"``
            (XLA-compiled TensorFlow) or ``"graph"`` (plain TensorFlow). See
            `modeling.request_runtime`.
        tf_threads: TensorFlow intra- and inter-op threads of ``vidrec serve`` (1 suits small
            per-request ops; parallelism comes from concurrent requests).
        workers: Server processes of ``vidrec serve`` sharing its port (one per core is the
            usual choice: a request holds the GIL for most of its few milliseconds). Each loads
            its own copy of the bundle and polls ``CURRENT`` itself; uploads and takedowns
            reach every worker through the event store.
    """

    candidates: int = 300
    default_k: int = 10
    max_k: int = 100
    max_request_history: int = 500
    max_exclude: int = 1_000
    diversity: str = "category_cap"
    category_cap: int = 3
    mmr_lambda: float = 0.7
    because: int = 3
    popularity_days: float = 7.0
    reload_poll_seconds: float = 5.0
    max_body_bytes: int = 131_072
    max_feedback_batch: int = 500
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_env: str = "VIDREC_API_KEY"
    ingest_key_env: str = "VIDREC_INGEST_KEY"
    api_keys_file: str | None = None
    events_url: str | None = None
    events_synchronous: str = "FULL"
    events_pool_size: int = 4
    events_connect_timeout_seconds: float = 2.0
    events_statement_timeout_seconds: float = 1.0
    events_retry_seconds: float = 1.0
    events_job_timeout_seconds: float = 3600.0
    request_runtime: str = "litert"
    tf_threads: int = 1
    workers: int = 1

    def __post_init__(self) -> None:
        f = "serving"
        require(self.workers >= 1, f"{f}.workers", f"must be >= 1, got {self.workers}")
        require(
            self.request_runtime in REQUEST_RUNTIMES,
            f"{f}.request_runtime",
            f"must be one of {list(REQUEST_RUNTIMES)}, got {self.request_runtime!r}",
        )
        require(self.tf_threads >= 1, f"{f}.tf_threads", f"must be >= 1, got {self.tf_threads}")
        require(self.candidates >= 1, f"{f}.candidates", f"must be >= 1, got {self.candidates}")
        require(self.max_k >= 1, f"{f}.max_k", f"must be >= 1, got {self.max_k}")
        require(
            1 <= self.default_k <= self.max_k,
            f"{f}.default_k",
            f"must be in [1, max_k={self.max_k}], got {self.default_k}",
        )
        require(self.max_request_history >= 1, f"{f}.max_request_history", "must be >= 1")
        require(self.max_exclude >= 0, f"{f}.max_exclude", "must be >= 0")
        diversities = ("category_cap", "mmr", "none")
        require(
            self.diversity in diversities,
            f"{f}.diversity",
            f"must be one of {list(diversities)}, got {self.diversity!r}",
        )
        require(self.category_cap >= 1, f"{f}.category_cap", "must be >= 1")
        require(0.0 <= self.mmr_lambda <= 1.0, f"{f}.mmr_lambda", "must be in [0, 1]")
        require(self.because >= 0, f"{f}.because", "must be >= 0")
        require(self.popularity_days > 0, f"{f}.popularity_days", "must be > 0")
        require(self.reload_poll_seconds >= 0, f"{f}.reload_poll_seconds", "must be >= 0")
        require(self.max_body_bytes >= 1_024, f"{f}.max_body_bytes", "must be >= 1024")
        require(self.max_feedback_batch >= 1, f"{f}.max_feedback_batch", "must be >= 1")
        # A batch the schema allows must never be refused for its size: 413 would tell the
        # client to split what the schema says is fine.
        needed = self.max_feedback_batch * FEEDBACK_EVENT_BYTES + BODY_OVERHEAD_BYTES
        require(
            self.max_body_bytes >= needed,
            f"{f}.max_body_bytes",
            f"must hold a full feedback batch: {self.max_feedback_batch} events x "
            f"{FEEDBACK_EVENT_BYTES} bytes + {BODY_OVERHEAD_BYTES} = {needed} bytes, got "
            f"{self.max_body_bytes} (raise it or lower serving.max_feedback_batch)",
        )
        require(1 <= self.port <= 65_535, f"{f}.port", f"must be a TCP port, got {self.port}")
        require(
            self.events_synchronous in ("FULL", "NORMAL"),
            f"{f}.events_synchronous",
            f"must be FULL or NORMAL, got {self.events_synchronous!r}",
        )
        if self.events_url is not None:
            shown = _PASSWORD_IN_URL.sub(r"\1***@", self.events_url)
            scheme = self.events_url.split("://", 1)[0].lower() if "://" in self.events_url else ""
            require(
                bool(self.events_url.strip()) and scheme in EVENT_STORE_SCHEMES,
                f"{f}.events_url",
                "must be a file path, sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME, "
                f"got {shown!r}",
            )
        require(
            1 <= self.events_pool_size <= 1_000,
            f"{f}.events_pool_size",
            f"must be in [1, 1000], got {self.events_pool_size}",
        )
        require(
            2 <= self.events_connect_timeout_seconds <= 600,
            f"{f}.events_connect_timeout_seconds",
            "must be in [2, 600] (libpq waits at least 2 s), got "
            f"{self.events_connect_timeout_seconds}",
        )
        for name in (
            "events_statement_timeout_seconds",
            "events_retry_seconds",
            "events_job_timeout_seconds",
        ):
            value = getattr(self, name)
            require(0 < value <= 86_400, f"{f}.{name}", f"must be in (0, 86400], got {value}")


@dataclasses.dataclass(frozen=True)
class BundlesConfig:
    """Bundle store upkeep (`core.bundle.BundleStore.apply_retention`).

    Attributes:
        keep_last: Newest bundles kept by retention; the serving bundle, its parent, the
            rollback target and any bundle a running job stages from are kept on top of these.
    """

    keep_last: int = 5

    def __post_init__(self) -> None:
        require(self.keep_last >= 1, "bundles.keep_last", f"must be >= 1, got {self.keep_last}")


@dataclasses.dataclass(frozen=True)
class RetrainConfig:
    """The nightly retrain and its promotion gate (`pipelines.jobs.retrain`).

    Attributes:
        window_days: The most recent days before the cutoff are the test window: the new model
            trains on what precedes it and is compared with the serving bundle on it.
        gate_metric: Metric of the two-stage pipeline compared on the window.
        tolerance: Relative drop of ``gate_metric`` (against the serving bundle) still promoted;
            0.02 promotes a model at most 2% worse, absorbing noise between equal models.
        min_window_users: Fewer evaluated users than this in the window and the gate cannot
            judge: the job fails instead of promoting blindly.
        max_window_users: Users sampled from the window for the comparison (bounds time).
        warm_start: Start both models from the serving bundle's weights (vocabularies grow).
        fold_in_epochs: After the gate passes, the new models train this many more epochs,
            warm-started, on every event before the cutoff, the window included, so the
            newest day reaches what is served (the gate judged the models without it); 0
            publishes the gated models as they are.
    """

    window_days: float = 1.0
    gate_metric: str = "ndcg@10"
    tolerance: float = 0.02
    min_window_users: int = 20
    max_window_users: int = 5_000
    warm_start: bool = True
    fold_in_epochs: int = 1

    def __post_init__(self) -> None:
        f = "retrain"
        require(self.fold_in_epochs >= 0, f"{f}.fold_in_epochs", "must be >= 0")
        require(self.window_days > 0, f"{f}.window_days", f"must be > 0, got {self.window_days}")
        metrics = ("ndcg@10", "hr@10", "mrr")
        require(
            self.gate_metric in metrics,
            f"{f}.gate_metric",
            f"must be one of {list(metrics)}, got {self.gate_metric!r}",
        )
        require(0.0 <= self.tolerance < 1.0, f"{f}.tolerance", "must be in [0, 1)")
        require(self.min_window_users >= 1, f"{f}.min_window_users", "must be >= 1")
        require(
            self.max_window_users >= self.min_window_users,
            f"{f}.max_window_users",
            "must be >= min_window_users",
        )


@dataclasses.dataclass(frozen=True)
class VidrecConfig:
    """All sections together; this is what a bundle's ``config.json`` holds."""

    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    retrieval: RetrievalConfig = dataclasses.field(default_factory=RetrievalConfig)
    ranking: RankingConfig = dataclasses.field(default_factory=RankingConfig)
    candidates: CandidatesConfig = dataclasses.field(default_factory=CandidatesConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    bundles: BundlesConfig = dataclasses.field(default_factory=BundlesConfig)
    retrain: RetrainConfig = dataclasses.field(default_factory=RetrainConfig)
    serving: ServingConfig = dataclasses.field(default_factory=ServingConfig)

    def __post_init__(self) -> None:
        require(
            self.ranking.history_length <= self.features.history_length,
            "ranking.history_length",
            f"must be <= features.history_length={self.features.history_length}, "
            f"got {self.ranking.history_length}",
        )


# URL schemes of `serving.events_url` ("": a plain path, SQLite); `pipelines.serving.events.urls`
# reads them.
EVENT_STORE_SCHEMES: tuple[str, ...] = ("", "sqlite", "postgresql", "postgres")
_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)[^@/]*@")

# The runtimes of the request path's models (`modeling.request_runtime`).
REQUEST_RUNTIMES: tuple[str, ...] = ("litert", "xla", "graph")

# Keys that configs written by earlier versions (every bundle's config.json) may still hold.
RETIRED_KEYS: dict[str, dict[str, str]] = {
    "serving": {"compile_xla": "replaced by serving.request_runtime"},
}


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain dict of a (nested) config dataclass; JSON writes its tuples as lists."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], payload: dict[str, Any], path: str = "") -> T:
    """Builds dataclass ``cls`` from ``payload``, recursing into nested sections.

    Every value must have its field's type, as JSON spells it: an integer field takes an
    integer (not ``true``, ``"64"`` or ``64.5``), a number field an integer or a float, a tuple
    field a list (or tuple) of its element type, an optional field also ``null``.

    Raises:
        ConfigError: An unknown key, a value of the wrong type (naming the dotted field and the
            type it expects), or a value that fails validation.
    """
    if not isinstance(payload, dict):
        raise ConfigError(
            f"{path or cls.__name__}: expected an object, got {type(payload).__name__}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in sorted(set(payload) & set(RETIRED_KEYS.get(path, {}))):
        # Bundles written before the key was retired still load; new configs may not use it.
        logger.info("%s.%s is no longer used: %s", path, key, RETIRED_KEYS[path][key])
        payload = {k: v for k, v in payload.items() if k != key}
    unknown = sorted(set(payload) - set(fields))
    if unknown:
        raise ConfigError(
            f"{path or cls.__name__}: unknown key(s) {unknown}; known keys are {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in payload.items():
        kind = hints[name]
        dotted = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(kind):
            kwargs[name] = config_from_dict(kind, value, dotted)
            continue
        try:
            kwargs[name] = _typed(kind, value)
        except _WrongTypeError:
            raise ConfigError(f"{dotted}: expected {_describe(kind)}, got {_show(value)}") from None
    return cls(**kwargs)


class _WrongTypeError(Exception):
    """A config value is not of its field's type (`config_from_dict` names the field)."""


# What each scalar field type accepts, and how an error names it (alone, and in a list).
_SCALARS: dict[Any, tuple[Callable[[Any], bool], str, str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false", "booleans"),
    int: (
        lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
        "an integer",
        "integers",
    ),
    float: (
        lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool),
        "a number",
        "numbers",
    ),
    str: (lambda v: isinstance(v, str), "a string", "strings"),
    type(None): (lambda v: v is None, "null", "nulls"),
}


def _typed(kind: Any, value: Any) -> Any:
    """``value`` as a field of type ``kind`` (a list becomes a tuple).

    Raises:
        _WrongTypeError: ``value`` is not a ``kind``.
    """
    if kind in _SCALARS:
        if not _SCALARS[kind][0](value):
            raise _WrongTypeError
        return value
    element = _tuple_element(kind)
    if element is not None:
        if not isinstance(value, list | tuple):
            raise _WrongTypeError
        return tuple(_typed(element, v) for v in value)
    options = _union_options(kind)
    for option in options:
        try:
            return _typed(option, value)
        except _WrongTypeError:
            continue
    if options:
        raise _WrongTypeError
    raise TypeError(f"config fields of type {kind!r} are not supported")


def _describe(kind: Any) -> str:
    """How an error message names type ``kind`` ("an integer", "a list of numbers", ...)."""
    if kind in _SCALARS:
        return _SCALARS[kind][1]
    element = _tuple_element(kind)
    if element is not None:
        return f"a list of {_SCALARS[element][2]}"
    return " or ".join(_describe(option) for option in _union_options(kind))


def _tuple_element(kind: Any) -> Any:
    """``X`` of ``tuple[X, ...]``, else None."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _union_options(kind: Any) -> tuple[Any, ...]:
    """Members of ``X | Y`` (or ``Optional[X]``), else ``()``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return typing.get_args(kind)
    return ()


def _show(value: Any, limit: int = 200) -> str:
    """``value`` as JSON would spell it (``"64"``, ``true``, ``null``), shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
