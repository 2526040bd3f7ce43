"""The ranker on a tiny synthetic platform: causality, masking, export, attention."""

import dataclasses

import numpy as np
import pytest

import ranking  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from candidates import CandidateSources
from core.config import (
    REQUEST_RUNTIMES,
    CandidatesConfig,
    FeatureConfig,
    RankingConfig,
    RetrievalConfig,
    SyntheticConfig,
)
from core.errors import BundleError
from core.features import FeatureSpace, engagement_labels
from core.schema import validate_interactions
from core.splits import leave_one_out
from pipelines.data.synthetic import generate_platform
from pipelines.jobs.ranking_data import case_lists, training_lists
from ranking.encoders import RankerScorer
from ranking.inputs import UNKNOWN_ENGAGEMENT
from ranking.request import RequestScorer
from ranking.train import train_ranker
from retrieval.train import train_retrieval

HISTORY = 8
RANKING = RankingConfig(
    dim=16,
    history_length=HISTORY,
    num_heads=2,
    hidden_units=(32,),
    candidates=40,
    hard_negatives=6,
    random_negatives=2,
    batch_size=64,
    max_epochs=2,
    patience=2,
    examples_per_user=0,  # every example: list positions line up with training events
)
SOURCES = CandidatesConfig(per_source=10, source_share=0.25)


@pytest.fixture(scope="module")
def stages():
    data = generate_platform(
        SyntheticConfig(
            num_users=250,
            num_videos=150,
            num_events=5_000,
            num_categories=5,
            num_creators=25,
            days=10,
            seed=5,
        )
    )
    split = leave_one_out(
        data.interactions, engagement=engagement_labels(data.interactions, data.videos)
    )
    features = FeatureSpace.fit(
        FeatureConfig(history_length=HISTORY, max_tokens=6), data.videos, split.train, data.users
    )
    retrieval = train_retrieval(
        split.train,
        features,
        RetrievalConfig(
            embedding_dim=16, num_heads=2, batch_size=16, max_epochs=1, extra_negatives=32
        ),
    )
    encoders = retrieval.encoders()
    catalogue = encoders.catalogue_embeddings()
    sources = CandidateSources.build(split.train, data.videos, features.video_vocab, SOURCES)
    lists = training_lists(
        split.train,
        engagement_labels(split.train, data.videos),
        features,
        encoders,
        catalogue,
        RANKING,
        sources,
    )
    validation, _ = case_lists(
        split.validation, features, encoders, catalogue, 40, HISTORY, sources
    )
    ranker = train_ranker(lists, features, catalogue, RANKING, validation)
    return data, split, features, encoders, catalogue, lists, validation, ranker, sources


def test_training_lists_follow_the_retrieval_stage(stages):
    _, split, _, _, _, lists, _, _, _ = stages
    assert lists.candidate_rows.shape[1] == 1 + 6 + 2
    assert (lists.target == 0).all()
    # Negatives are never the watched video, and never something already watched.
    negatives, valid = lists.candidate_rows[:, 1:], lists.candidate_valid[:, 1:]
    assert not (valid & (negatives == lists.candidate_rows[:, :1])).any()
    watched = (negatives[:, :, None] == lists.history_rows[:, None, :]).any(axis=2)
    assert not (valid & watched).any()
    assert len(lists) == len(split.train) - split.train["user_id"].nunique()


def test_training_lists_keep_each_users_latest_examples_when_asked(stages):
    data, split, features, encoders, catalogue, lists, _, _, sources = stages
    train = split.train
    latest = training_lists(
        train,
        engagement_labels(train, data.videos),
        features,
        encoders,
        catalogue,
        dataclasses.replace(RANKING, examples_per_user=3),
        sources,
    )
    per_user = train.groupby("user_id").size().to_numpy()
    assert len(latest) == np.minimum(per_user - 1, 3).sum()
    # Each user's last example is the same list whether earlier ones are kept or not.
    last = np.cumsum(per_user - 1) - 1
    last_latest = np.cumsum(np.minimum(per_user - 1, 3)) - 1
    np.testing.assert_array_equal(latest.history_rows[last_latest], lists.history_rows[last])
    np.testing.assert_array_equal(
        latest.candidate_rows[last_latest, 0], lists.candidate_rows[last, 0]
    )


def test_a_later_event_does_not_change_an_earlier_example(stages):
    data, split, features, encoders, catalogue, lists, _, _, sources = stages
    train = split.train
    user = train["user_id"].iloc[0]
    last = train.index[train["user_id"] == user][-1]
    changed = train.copy()
    changed.loc[last, "video_id"] = int(train["video_id"].iloc[-1])
    changed.loc[last, "watch_seconds"] = 1.0
    changed = validate_interactions(changed, "changed")
    again = training_lists(
        changed,
        engagement_labels(changed, data.videos),
        features,
        encoders,
        catalogue,
        RANKING,
        sources,
    )
    # Every example before the changed (last) event of that user is identical.
    rows = np.flatnonzero(lists.history_rows.any(axis=1))
    earlier = rows[rows < last - 1]
    for name in ("history_rows", "history_engagement", "history_age_hours"):
        np.testing.assert_array_equal(getattr(again, name)[earlier], getattr(lists, name)[earlier])
    np.testing.assert_array_equal(
        again.candidate_rows[earlier, :7], lists.candidate_rows[earlier, :7]
    )


def test_padding_and_invalid_slots_do_not_change_scores(stages):
    *_, validation, ranker, _ = stages
    scorer = ranker.scorer()
    part = validation.take(np.arange(8))
    base = scorer.inputs(
        part.history_rows,
        part.history_engagement,
        part.history_age_hours,
        part.candidate_rows,
        part.evidence,
        part.user_attributes,
    )
    reference = scorer.score_inputs(base)
    # Junk in padded history slots (rows stay 0) must be masked out.
    junk = {k: v.copy() for k, v in base.items()}
    padded = base["history_rows"] == 0
    assert padded.any()
    rng = np.random.default_rng(0)
    junk["history_embeddings"][padded] = rng.normal(size=junk["history_embeddings"][padded].shape)
    junk["history_engagement"][padded] = 0.9
    junk["history_age_hours"][padded] = 1e4
    junk["history_numeric"][padded] = 3.0
    out = scorer.score_inputs(junk)
    np.testing.assert_allclose(out["watch_logits"], reference["watch_logits"], atol=1e-5)
    # Candidates are scored independently: a shorter list gives the same scores.
    short = {k: (v[:, :5] if k.startswith("candidate") else v) for k, v in base.items()}
    np.testing.assert_allclose(
        scorer.score_inputs(short)["watch_logits"], reference["watch_logits"][:, :5], atol=1e-5
    )
    # Attention is a distribution over the real history (plus a null slot), none on padding.
    attention = reference["attention"]
    assert (attention[np.broadcast_to(padded[:, None, :], attention.shape)] < 1e-6).all()
    assert (attention.sum(axis=-1) <= 1.0 + 1e-5).all()


def test_export_round_trip_gives_identical_scores(stages, tmp_path):
    _, _, features, _, catalogue, _, validation, ranker, _ = stages
    scorer = ranker.scorer()
    scorer.save(tmp_path)
    loaded = RankerScorer.load(tmp_path, features, catalogue, RANKING)
    part = validation.take(np.arange(16))
    before, after = scorer.score_lists(part), loaded.score_lists(part)
    for key in ("watch_logits", "engagement", "attention"):
        np.testing.assert_allclose(after[key], before[key], rtol=0, atol=1e-6)


@pytest.mark.parametrize("runtime", REQUEST_RUNTIMES)
def test_request_scorer_matches_the_batch_scorer(stages, tmp_path, runtime):
    _, _, features, _, catalogue, _, validation, ranker, _ = stages
    ranker.scorer().save(tmp_path)
    loaded = RankerScorer.load(tmp_path, features, catalogue, RANKING)
    slots = validation.candidate_rows.shape[1]
    request = RequestScorer(
        loaded.score_fn,
        HISTORY,
        slots,
        catalogue.shape[1],
        features.config.max_categories,
        len(features.user_attributes),
        loaded.evidence_width,
        runtime,
        loaded.keepalive,
        loaded.saved_model_dir,  # LiteRT converts in a child process from the SavedModel
    )
    batch = loaded.score_lists(validation.take(np.arange(4)))
    for i in range(4):
        # A request passes the watches it knows and the candidates it found; the scorer pads
        # them as the lists are padded, and unknown engagement arrives as NaN.
        known = validation.history_rows[i] != 0
        engagement = validation.history_engagement[i][known]
        found = slots - 3 * i
        out = request(
            validation.history_rows[i][known],
            np.where(engagement == UNKNOWN_ENGAGEMENT, np.nan, engagement),
            validation.history_age_hours[i][known],
            validation.candidate_rows[i, :found],
            validation.evidence[i, :found],
            validation.user_attributes[i : i + 1],
            features.catalogue,
            catalogue,
        )
        assert out["watch_logits"].shape == (found,)
        assert out["attention"].shape == (found, HISTORY)
        np.testing.assert_array_equal(out["history_rows"], validation.history_rows[i])
        for key in ("watch_logits", "engagement", "attention"):
            np.testing.assert_allclose(out[key], batch[key][i, :found], rtol=0, atol=1e-5)


def test_unknown_request_runtime_is_refused(stages):
    *_, ranker, _ = stages
    with pytest.raises(BundleError, match=r"request runtime must be one of \['litert'"):
        RequestScorer(ranker.scorer().score_fn, HISTORY, 4, 16, 3, 0, 15, "onnx")


def test_ranker_keeps_its_best_epoch(stages):
    *_, ranker, _ = stages
    history = ranker.history
    assert 1 <= history.best_epoch <= len(history.epochs) <= 2
    assert history.best.validation["ndcg@10"] == max(
        e.validation["ndcg@10"] for e in history.epochs
    )
