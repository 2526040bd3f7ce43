"""The train job's recency fit reads validation cases as they come: some hold no target, and
some targets are videos the feature space does not know; only the others are judged."""

import dataclasses

import numpy as np

from candidates import CandidateSources
from candidates.recency import fit_recency_decay
from core.config import VidrecConfig
from core.features import FeatureSpace
from core.splits import leave_one_out
from core.vocab import FIRST_ID_ROW
from pipelines.jobs.train import _fit_recency
from tests.tiny import small_platform


def test_cases_without_a_known_target_are_left_out_of_the_fit():
    dataset = small_platform(seed=3)
    config = VidrecConfig()
    split = leave_one_out(dataset.interactions)
    features = FeatureSpace.fit(config.features, dataset.videos, split.train, dataset.users)
    sources = CandidateSources.build(
        split.train, dataset.videos, features.video_vocab, config.candidates
    )
    validation = split.validation
    unknown = int(dataset.videos["video_id"].max()) + 1
    # Case 0 loses its target (its place in the CSR arrays is then case 1's), case 2's
    # target becomes a video nobody uploaded.
    counts = np.diff(validation.target_indptr)
    counts[0] = 0
    targets = validation.target_video_ids[validation.target_indptr[:-1]].copy()
    targets[2] = unknown
    keep = np.arange(len(validation)) != 0
    edited = dataclasses.replace(
        validation,
        target_indptr=np.concatenate([[0], np.cumsum(np.minimum(counts, 1))]),
        target_video_ids=targets[keep],
        target_timestamps=validation.target_timestamps[validation.target_indptr[:-1]][keep],
    )
    fitted, record = _fit_recency(sources, edited, features, config)
    assert record["cases"] == len(validation) - 2
    # The same as the fit on the judged cases alone, each with its whole history.
    vocab = features.video_vocab
    judged = np.r_[1, np.arange(3, len(validation))]
    histories = [vocab.lookup(validation.history(i)) for i in judged]
    _, expected = fit_recency_decay(
        sources,
        [rows[rows >= FIRST_ID_ROW] for rows in histories],
        vocab.lookup(targets[judged]),
        config.candidates.recency_decay_choices,
    )
    assert record == expected
    assert fitted.recency_decay == record["recency_decay"]
