"""The two-tower `tfrs.Model`: towers wired to a `tfrs.tasks.Retrieval` task.

One training example is a window of a user's watches (see `core.sequences`). The user tower
reads the window once and yields a query at every column; each owned column's query is scored
against every target of the batch (in-batch negatives) plus ``extra_negatives`` videos drawn
uniformly from the catalogue (mixed negative sampling). Logits are cosine / temperature,
corrected by the log of each candidate's expected count in the candidate set (logQ), with
accidental hits removed.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from core.config import FeatureConfig, RetrievalConfig
from core.features import FeatureSpace, VideoFeatureArrays
from core.vocab import FIRST_ID_ROW
from retrieval.towers import UserTower, VideoTower

VIDEO_FEATURE_NAMES: tuple[str, ...] = tuple(VideoFeatureArrays.__dataclass_fields__)


class TwoTowerModel(tfrs.Model):
    """Sequence-aware two-tower retrieval model.

    Args:
        features: The feature space the model is built for (table sizes, catalogue features).
        config: Model and training hyper-parameters.
        target_frequency: ``[video_vocab.num_rows] float`` count of each video as a training
            target; its normalisation is the in-batch sampling distribution for logQ.
    """

    def __init__(
        self,
        features: FeatureSpace,
        config: RetrievalConfig,
        target_frequency: np.ndarray,
    ) -> None:
        super().__init__()
        feature_config: FeatureConfig = features.config
        self.config = config
        self.history_length = feature_config.history_length
        self.num_video_rows = features.video_vocab.num_rows
        self.video_tower = VideoTower(
            num_video_rows=features.video_vocab.num_rows,
            num_category_rows=features.categories.num_rows,
            num_creator_rows=features.creators.num_rows,
            token_buckets=feature_config.token_hash_buckets,
            dim=config.embedding_dim,
            use_content=feature_config.use_content_features,
            id_dropout=config.id_dropout,
            dropout=config.dropout,
        )
        self.user_tower = UserTower(
            history_length=feature_config.history_length,
            dim=config.embedding_dim,
            num_blocks=config.num_blocks,
            num_heads=config.num_heads,
            dropout=config.dropout,
            num_user_rows=features.user_vocab.num_rows if feature_config.use_user_id else 0,
            user_attribute_rows=tuple(v.num_rows for v in features.user_attributes.values()),
        )
        # The catalogue's features live in the graph as constants-by-row so a batch only
        # carries video rows; they are rebuilt, not trained, when the catalogue changes.
        self.catalogue = {
            name: tf.constant(values) for name, values in features.catalogue.as_dict().items()
        }
        probability = np.asarray(target_frequency, dtype=np.float64)
        probability = probability / max(probability.sum(), 1.0)
        self.target_probability = tf.constant(probability, dtype=tf.float32)
        self.task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(
                from_logits=True, reduction=tf.keras.losses.Reduction.SUM
            ),
            temperature=config.temperature,
            remove_accidental_hits=config.remove_accidental_hits,
            # Keras reports a step's returned loss as-is; this mean covers the whole epoch.
            loss_metrics=[tf.keras.metrics.Mean(name="epoch_loss")],
        )

    def embed_rows(self, rows: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Embeddings of catalogue rows, ``[...] int64`` -> ``[..., d] float32``.

        Each distinct row is embedded once, which matters when a batch repeats popular videos.
        """
        flat = tf.reshape(rows, [-1])
        unique, index = tf.unique(flat, out_idx=tf.int64)
        gathered = {name: tf.gather(table, unique) for name, table in self.catalogue.items()}
        vectors = tf.gather(self.video_tower(gathered, training=training), index)
        vectors = vectors * tf.cast(tf.not_equal(flat, 0), vectors.dtype)[:, None]
        return tf.reshape(vectors, tf.concat([tf.shape(rows), [-1]], axis=0))

    def queries(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Query at every column of a window batch, ``[b, L, d] float32``."""
        history = self.embed_rows(inputs["history_rows"], training=training)
        return self.user_tower(
            history, inputs["user_rows"], inputs["user_attributes"], training=training
        )

    def compute_loss(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        """Sampled-softmax loss over the owned columns of a window batch.

        Args:
            inputs: ``history_rows [b, L] int64``, ``target_rows [b, L] int64``,
                ``owned [b, L] bool``, ``user_rows [b] int64``, ``user_attributes [b, A] int64``.
            training: Whether dropout is active.
        """
        queries = tf.boolean_mask(self.queries(inputs, training=training), inputs["owned"])
        positive_rows = tf.boolean_mask(inputs["target_rows"], inputs["owned"])
        num_queries = tf.shape(positive_rows)[0]
        extra = self.config.extra_negatives
        random_rows = (
            tf.random.uniform([extra], FIRST_ID_ROW, self.num_video_rows, dtype=tf.int64)
            if extra
            else None
        )
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if replicas == 1:
            candidate_rows = positive_rows
            if random_rows is not None:
                candidate_rows = tf.concat([positive_rows, random_rows], axis=0)
            candidates = self.embed_rows(candidate_rows, training=training)
            batch_queries = num_queries
        else:
            candidate_rows, candidates, batch_queries = self._global_candidates(
                context, positive_rows, random_rows, training
            )
        sampling_probability = None
        if self.config.logq_correction:
            # Expected count of each candidate in the candidate set: in-batch targets follow the
            # target frequency, the extras the uniform distribution.
            num_catalogue = tf.cast(self.num_video_rows - FIRST_ID_ROW, tf.float32)
            in_batch = tf.cast(batch_queries, tf.float32) * tf.gather(
                self.target_probability, candidate_rows
            )
            expected = in_batch + extra / num_catalogue
            # Only ratios matter; scaling to a maximum of 1 keeps TFRS's clip to [1e-6, 1]
            # from flattening the correction.
            sampling_probability = expected / tf.reduce_max(expected)
        # The task sees this replica's mean loss, which is what its epoch_loss metric records
        # (a per-replica mean, averaged over replicas and steps: comparable across cluster sizes).
        weight = 1.0 / tf.cast(tf.maximum(num_queries, 1), tf.float32)
        loss = self.task(
            queries,
            candidates,
            sample_weight=tf.fill([num_queries], weight),
            candidate_sampling_probability=sampling_probability,
            candidate_ids=candidate_rows,
            compute_metrics=False,
            compute_batch_metrics=False,
        )
        if replicas == 1:
            return loss
        # The optimizer sums gradients over replicas (tf.distribute all-reduce with SUM), so
        # each replica returns its share of the global mean: local sum / global query count,
        # as tf.nn.compute_average_loss does with global_batch_size.
        share = tf.cast(num_queries, tf.float32) / tf.cast(tf.maximum(batch_queries, 1), tf.float32)
        return loss * share

    def _global_candidates(
        self,
        context: tf.distribute.ReplicaContext,
        positive_rows: tf.Tensor,
        random_rows: tf.Tensor | None,
        training: bool,
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Candidates of a replica under a multi-replica strategy: every replica's positives.

        With data parallelism each replica holds ``1 / replicas`` of the global batch; scoring
        only its own targets would give each query fewer in-batch negatives than one worker
        training on the whole batch, and a different loss. The targets and their embeddings
        are all-gathered instead (the gather is differentiable: gradients flow back to the
        replica that embedded each target), with this replica's own positives first, since
        TFRS labels query ``i`` with candidate ``i``.

        Returns:
            ``candidate_rows [c] int64``, ``candidates [c, d] float32`` and the number of
            queries in the global batch.
        """
        num_queries = tf.shape(positive_rows)[0]
        positives = self.embed_rows(positive_rows, training=training)
        all_rows = context.all_gather(positive_rows, axis=0)
        all_vectors = context.all_gather(positives, axis=0)
        counts = context.all_gather(tf.reshape(num_queries, [1]), axis=0)
        start = tf.reduce_sum(counts[: context.replica_id_in_sync_group])
        stop = start + num_queries
        rows = [positive_rows, all_rows[:start], all_rows[stop:]]
        vectors = [positives, all_vectors[:start], all_vectors[stop:]]
        if random_rows is not None:
            # Same seed on every worker: the extras are the same set on every replica, like the
            # one set a single worker draws per batch.
            rows.append(random_rows)
            vectors.append(self.embed_rows(random_rows, training=training))
        return tf.concat(rows, axis=0), tf.concat(vectors, axis=0), tf.reduce_sum(counts)
