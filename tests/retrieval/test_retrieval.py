"""Two-tower retrieval on a tiny synthetic platform: training, export, causality, cold videos."""

import numpy as np
import pandas as pd
import pytest

import retrieval  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from core.config import REQUEST_RUNTIMES, FeatureConfig, RetrievalConfig, SyntheticConfig
from core.features import FeatureSpace
from core.schema import validate_videos
from core.splits import leave_one_out
from pipelines.data.synthetic import generate_platform
from retrieval.encoders import RetrievalEncoders
from retrieval.request import RequestQuery
from retrieval.train import evaluate_retrieval, train_retrieval


@pytest.fixture(scope="module")
def platform():
    return generate_platform(
        SyntheticConfig(
            num_users=300,
            num_videos=200,
            num_events=6_000,
            num_categories=6,
            num_creators=30,
            days=10,
            seed=3,
        )
    )


@pytest.fixture(scope="module")
def trained(platform):
    split = leave_one_out(platform.interactions)
    features = FeatureSpace.fit(
        FeatureConfig(history_length=12, max_tokens=8), platform.videos, split.train, platform.users
    )
    config = RetrievalConfig(
        embedding_dim=16,
        num_heads=2,
        batch_size=16,
        max_epochs=3,
        patience=3,
        extra_negatives=64,
        validation_recall_at=20,
    )
    return split, train_retrieval(split.train, features, config, validation=split.validation)


def test_training_lowers_the_loss_and_keeps_the_best_epoch(trained):
    _, model = trained
    history = model.history
    assert len(history.epochs) == 3
    assert history.epochs[-1].loss < history.epochs[0].loss
    best = max(history.epochs, key=lambda e: e.validation["recall@20"])
    assert history.best_epoch == best.epoch
    assert history.num_examples > 0


def test_trained_model_beats_random_on_held_out_users(trained):
    split, model = trained
    metrics = evaluate_retrieval(model.encoders(), split.test, ks=(10,), ns=(50,))
    # 200 videos, about 30 watched per user: random ranking gives Recall@50 near 0.29.
    assert metrics["recall@50"] > 0.4


def test_export_round_trip_gives_identical_embeddings(trained, tmp_path):
    split, model = trained
    encoders = model.encoders()
    encoders.save(tmp_path)
    loaded = RetrievalEncoders.load(tmp_path, model.features)
    catalogue = encoders.catalogue_embeddings()
    np.testing.assert_allclose(loaded.catalogue_embeddings(), catalogue, rtol=0, atol=1e-6)
    histories = [split.test.history(i) for i in range(20)]
    users = split.test.user_ids[:20]
    np.testing.assert_allclose(
        loaded.query_embeddings(catalogue, histories, users),
        encoders.query_embeddings(catalogue, histories, users),
        rtol=0,
        atol=1e-6,
    )
    assert loaded.dim == 16
    # The request path's fixed-shape tower gives the same query in every runtime.
    features = model.features
    rows = features.video_vocab.lookup(np.asarray(histories[3], dtype=np.int64))
    length = features.config.history_length
    padded = np.zeros((1, length), dtype=np.int64)
    kept = rows[-length:]
    padded[0, length - len(kept) :] = kept
    user_rows = features.user_rows(users[3:4])
    attributes = features.user_attribute_matrix(user_rows)
    expected = loaded.query_fn(catalogue[padded], user_rows, attributes).numpy()
    for runtime in REQUEST_RUNTIMES:
        request = RequestQuery(
            loaded.query_fn, length, 16, attributes.shape[1], runtime, loaded.keepalive
        )
        query = request(catalogue[padded], user_rows, attributes)
        assert query.shape == (1, 16) and query.dtype == np.float32
        np.testing.assert_allclose(query, expected, rtol=0, atol=1e-5)


def test_query_at_a_column_ignores_later_columns(trained):
    """Causality: the query for a prefix does not change when later watches change."""
    split, model = trained
    encoders = model.encoders()
    catalogue = encoders.catalogue_embeddings()
    features = model.features
    history = split.test.history(0)[-12:]
    rows, _ = features.history_matrix([history])
    changed = rows.copy()
    changed[0, -3:] = features.video_vocab.lookup(features.video_vocab.ids[:3])
    user_rows = features.user_rows(split.test.user_ids[:1])
    attributes = features.user_attribute_matrix(user_rows)
    tower = model.model.user_tower
    before = tower(catalogue[rows], user_rows, attributes).numpy()
    after = tower(catalogue[changed], user_rows, attributes).numpy()
    np.testing.assert_allclose(after[0, :-3], before[0, :-3], rtol=0, atol=1e-6)
    assert not np.allclose(after[0, -1], before[0, -1])


def test_unknown_videos_in_a_history_are_ignored(trained):
    split, model = trained
    encoders = model.encoders()
    catalogue = encoders.catalogue_embeddings()
    history = split.test.history(1)
    noisy = np.insert(history, [1, len(history)], [10**12, 10**12 + 1])
    user = split.test.user_ids[1:2]
    np.testing.assert_allclose(
        encoders.query_embeddings(catalogue, [noisy], user),
        encoders.query_embeddings(catalogue, [history], user),
        rtol=0,
        atol=1e-6,
    )


def test_new_video_gets_a_content_embedding(trained, platform):
    """A video uploaded after training is embedded from its metadata (its id is unknown)."""
    _, model = trained
    known = platform.videos.iloc[0]
    twin = validate_videos(pd.DataFrame([{**known.to_dict(), "video_id": 10**9}]))
    features = model.features.grow(videos=twin)
    encoders = RetrievalEncoders(model.encoders().query_fn, model.encoders().video_fn, features, 16)
    new_vector = encoders.embed_features(features.video_features(twin))[0]
    assert np.isfinite(new_vector).all()
    assert np.linalg.norm(new_vector) == pytest.approx(1.0, abs=1e-5)
    # Same content, unknown id: closer to its twin than the average video is.
    catalogue = encoders.catalogue_embeddings()
    twin_row = model.features.video_vocab.lookup([known["video_id"]])[0]
    similarities = catalogue[2 : model.features.video_vocab.num_rows] @ new_vector
    assert catalogue[twin_row] @ new_vector > np.median(similarities)


def test_warm_start_keeps_old_rows_and_adds_new_ones(trained, platform):
    """A grown vocabulary: every existing row starts from its trained value, new rows exist."""
    import tensorflow as tf

    from core.sequences import training_windows
    from core.warm_start import grow_weights
    from retrieval.model import TwoTowerModel
    from retrieval.train import window_dataset

    split, model = trained
    new_video = platform.videos.iloc[:1].assign(video_id=10**9, creator="brand new channel")
    grown = model.features.grow(
        videos=validate_videos(new_video),
        interactions=split.train.assign(user_id=split.train["user_id"] + 10**6).iloc[:50],
    )
    assert grown.video_vocab.num_rows == model.features.video_vocab.num_rows + 1
    fresh = TwoTowerModel(grown, model.config, np.ones(grown.video_vocab.num_rows))
    windows = training_windows(split.train, grown, grown.config.history_length)
    fresh.compute_loss(next(iter(window_dataset(windows, grown, 8, 0))), training=False)
    weights, report = grow_weights(fresh.get_weights(), model.model.get_weights())
    fresh.set_weights(weights)
    old_table = model.model.video_tower.id_embedding.embeddings.numpy()
    new_table = fresh.video_tower.id_embedding.embeddings.numpy()
    np.testing.assert_array_equal(new_table[: len(old_table)], old_table)
    assert new_table.shape[0] == len(old_table) + 1
    assert (len(old_table), len(old_table) + 1) in report.grown.values()
    # Every tensor that did not grow is the trained one.
    for before, after in zip(model.model.get_weights(), fresh.get_weights(), strict=True):
        if before.shape == after.shape:
            np.testing.assert_array_equal(after, before)
    assert isinstance(fresh.video_tower.id_embedding.embeddings, tf.Variable)
