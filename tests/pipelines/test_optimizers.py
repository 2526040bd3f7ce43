"""Sparse-aware optimizers: large embedding tables get Adagrad, training still learns."""

import functools

import tensorflow_recommenders as tfrs

from core.config import FeatureConfig, RetrievalConfig
from core.features import FeatureSpace
from core.splits import leave_one_out
from pipelines.jobs.optimizers import sparse_aware
from retrieval.train import train_retrieval
from tests.tiny import small_platform


def test_large_tables_train_with_sparse_adagrad():
    data = small_platform(seed=7)
    split = leave_one_out(data.interactions)
    features = FeatureSpace.fit(
        FeatureConfig(history_length=10, max_tokens=8), data.videos, split.train, data.users
    )
    config = RetrievalConfig(
        embedding_dim=16,
        num_heads=2,
        batch_size=16,
        max_epochs=2,
        patience=2,
        extra_negatives=32,
        validation_recall_at=20,
    )
    # 150 videos: a threshold of 100 rows sends the video-id table to Adagrad, the rest to Adam.
    trained = train_retrieval(
        split.train,
        features,
        config,
        validation=split.validation,
        make_optimizer=functools.partial(
            sparse_aware, learning_rate=1e-3, sparse_rows=100, sparse_learning_rate=0.05
        ),
    )
    optimizer = trained.model.optimizer
    assert isinstance(optimizer, tfrs.experimental.optimizers.CompositeOptimizer)
    history = trained.history
    assert history.epochs[-1].loss < history.epochs[0].loss
    # Below the threshold everything stays on Adam.
    assert type(sparse_aware(trained.model, 1e-3, 10**6, 0.05)).__name__ == "Adam"
