"""Configuration: frozen dataclasses validated on construction and passed explicitly.

Each section validates itself in ``__post_init__`` and names the field to change in its error.
`VidrecConfig` groups the sections; `config_from_dict` / `config_to_dict` round-trip it through
JSON (``config.json`` in a bundle), refusing unknown keys so that typos do not pass silently.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from core.errors import ConfigError

T = TypeVar("T")


def require(condition: bool, field: str, message: str) -> None:
    """Raises `ConfigError` naming ``field`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the synthetic video platform (`pipelines.synthetic`).

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
        require(self.num_videos >= 2, "synthetic.num_videos", f"must be >= 2, got {self.num_videos}")
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
class RetrievalConfig:
    """Two-tower retrieval model and its training (`retrieval`).

    Attributes:
        embedding_dim: Output dimension of both towers (the index dimension).
        history_length: Most recent watches the user tower reads.
        num_blocks: Causal self-attention blocks in the history encoder.
        num_heads: Attention heads per block.
        dropout: Dropout rate inside the towers.
        use_user_id: Add a user-id embedding (with an OOV row) to the query.
        use_user_features: Add embeddings of the users table's attributes to the query.
        use_content_features: Give the video tower categories, title tokens, tags, year or
            upload age, duration and creator beside the id embedding.
        title_hash_buckets: Hash buckets for title and tag tokens.
        temperature: Softmax temperature on cosine similarities.
        logq_correction: Subtract log sampling probability (item frequency) from in-batch logits.
        remove_accidental_hits: Do not treat another example's positive as a negative when it is
            the same video.
        extra_negatives: Videos drawn uniformly from the catalogue per batch, shared by all
            queries as extra negatives (mixed negative sampling); 0 for pure in-batch softmax.
        batch_size: Sequences per training step.
        learning_rate: Adam learning rate.
        max_epochs: Upper bound on epochs; early stopping usually ends sooner.
        patience: Epochs without a better validation Recall@N before stopping.
        validation_recall_at: N of the validation Recall@N used for early stopping.
        max_train_seconds: Wall-clock budget for training; 0 means none.
        seed: Seed of initialisation, shuffling and negative sampling.
    """

    embedding_dim: int = 64
    history_length: int = 50
    num_blocks: int = 2
    num_heads: int = 2
    dropout: float = 0.2
    use_user_id: bool = False
    use_user_features: bool = True
    use_content_features: bool = True
    title_hash_buckets: int = 20_000
    temperature: float = 0.05
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    extra_negatives: int = 1024
    batch_size: int = 128
    learning_rate: float = 1e-3
    max_epochs: int = 200
    patience: int = 5
    validation_recall_at: int = 100
    max_train_seconds: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        f = "retrieval"
        require(self.embedding_dim >= 2, f"{f}.embedding_dim", f"must be >= 2, got {self.embedding_dim}")
        require(
            self.embedding_dim % self.num_heads == 0 if self.num_heads > 0 else False,
            f"{f}.num_heads",
            f"must be >= 1 and divide embedding_dim={self.embedding_dim}, got {self.num_heads}",
        )
        require(self.history_length >= 1, f"{f}.history_length", f"must be >= 1, got {self.history_length}")
        require(self.num_blocks >= 1, f"{f}.num_blocks", f"must be >= 1, got {self.num_blocks}")
        require(0.0 <= self.dropout < 1.0, f"{f}.dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.title_hash_buckets >= 1, f"{f}.title_hash_buckets", "must be >= 1")
        require(self.temperature > 0.0, f"{f}.temperature", f"must be > 0, got {self.temperature}")
        require(self.extra_negatives >= 0, f"{f}.extra_negatives", "must be >= 0")
        require(self.batch_size >= 2, f"{f}.batch_size", f"must be >= 2, got {self.batch_size}")
        require(self.learning_rate > 0.0, f"{f}.learning_rate", "must be > 0")
        require(self.max_epochs >= 1, f"{f}.max_epochs", f"must be >= 1, got {self.max_epochs}")
        require(self.patience >= 1, f"{f}.patience", f"must be >= 1, got {self.patience}")
        require(self.validation_recall_at >= 1, f"{f}.validation_recall_at", "must be >= 1")
        require(self.max_train_seconds >= 0.0, f"{f}.max_train_seconds", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Offline evaluation (`pipelines.evaluate`).

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
        require(not unknown, "evaluation.baselines", f"unknown {unknown}; choose from {sorted(known)}")


@dataclasses.dataclass(frozen=True)
class VidrecConfig:
    """All sections together; this is what a bundle's ``config.json`` holds."""

    retrieval: RetrievalConfig = dataclasses.field(default_factory=RetrievalConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON-able dict of a (nested) config dataclass; tuples become lists."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type[T], payload: dict[str, Any], path: str = "") -> T:
    """Builds dataclass ``cls`` from ``payload``, recursing into nested sections.

    Raises:
        ConfigError: An unknown key, or a value that fails validation.
    """
    if not isinstance(payload, dict):
        raise ConfigError(f"{path or cls.__name__}: expected an object, got {type(payload).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
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
        elif _is_tuple_type(kind) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _is_tuple_type(kind: Any) -> bool:
    origin = typing.get_origin(kind)
    return origin is tuple or (isinstance(kind, types.GenericAlias) and kind.__origin__ is tuple)
