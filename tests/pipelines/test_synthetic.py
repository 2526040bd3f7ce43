"""The synthetic platform: determinism, schema, and that each planted structure is really there."""

from __future__ import annotations

import fnmatch
import json
import re
import time
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import SyntheticConfig
from core.errors import ConfigError
from core.schema import Dataset
from pipelines.data.datasets import load_dataset
from pipelines.data.synthetic import (
    CATEGORY_WORDS,
    WORDS_FILE,
    PlatformKnobs,
    PlatformTruth,
    generate_platform,
    generate_platform_with_truth,
    read_dataset,
    write_dataset,
)

SMALL = SyntheticConfig(
    num_users=1500, num_videos=2000, num_events=60_000, num_creators=150, days=30, seed=3
)
TINY = SyntheticConfig(
    num_users=300, num_videos=500, num_events=6_000, num_creators=40, days=10, seed=11
)


@pytest.fixture(scope="module")
def platform() -> tuple[Dataset, PlatformTruth]:
    return generate_platform_with_truth(SMALL)


def _rows(dataset: Dataset, truth: PlatformTruth) -> tuple[np.ndarray, np.ndarray]:
    """Truth rows of each event's user and video (events in schema order)."""
    video_row = pd.Series(np.arange(len(truth.video_ids)), index=truth.video_ids)
    user_row = pd.Series(np.arange(len(truth.user_ids)), index=truth.user_ids)
    events = dataset.interactions
    return (
        user_row.loc[events["user_id"].to_numpy()].to_numpy(),
        video_row.loc[events["video_id"].to_numpy()].to_numpy(),
    )


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    first = generate_platform(TINY)
    again = generate_platform(TINY)
    pd.testing.assert_frame_equal(first.interactions, again.interactions)
    pd.testing.assert_frame_equal(first.videos, again.videos)
    pd.testing.assert_frame_equal(first.users, again.users)
    other = generate_platform(SyntheticConfig(**{**TINY.__dict__, "seed": 12}))
    assert not first.interactions["video_id"].equals(other.interactions["video_id"])
    assert not first.videos["title"].equals(other.videos["title"])


def test_schema_sizes_and_values(platform: tuple[Dataset, PlatformTruth]) -> None:
    dataset, _ = platform
    events, videos, users = dataset.interactions, dataset.videos, dataset.users
    assert dataset.name == "synthetic"
    assert dataset.num_videos == SMALL.num_videos
    assert dataset.num_users == SMALL.num_users
    assert abs(len(events) - SMALL.num_events) <= 0.01 * SMALL.num_events
    assert events.groupby("user_id").size().min() >= 5
    for column in ("user_id", "video_id", "timestamp"):
        assert events[column].dtype == np.int64
    assert (events["event"] == "watch").all()
    assert events["rating"].isna().all()
    duration = videos.set_index("video_id")["duration"].reindex(events["video_id"]).to_numpy()
    watched = events["watch_seconds"].to_numpy()
    assert (watched >= 1).all() and (watched <= duration).all()
    assert videos["duration"].notna().all() and (videos["duration"] > 0).all()
    assert videos["creator"].str.len().min() > 0
    assert videos["categories"].map(len).between(1, 2).all()
    assert videos["tags"].map(len).eq(3).all()
    assert set(users.columns) == {"user_id", "country", "device"}
    assert set(users["device"]) <= {"mobile", "desktop", "tv", "tablet"}
    start = events["timestamp"].min()
    assert events["timestamp"].max() - start <= (SMALL.days + 1) * 86_400


def test_no_repeat_watches_and_nothing_before_upload(
    platform: tuple[Dataset, PlatformTruth],
) -> None:
    dataset, _ = platform
    events = dataset.interactions
    assert not events.duplicated(["user_id", "video_id"]).any()
    upload = dataset.videos.set_index("video_id")["upload_time"].reindex(events["video_id"])
    assert (events["timestamp"].to_numpy() >= upload.to_numpy()).all()
    # Some videos predate the span (back catalogue) and some arrive during it.
    assert (dataset.videos["upload_time"] < events["timestamp"].min()).mean() > 0.2
    assert (dataset.videos["upload_time"] > events["timestamp"].min() + 86_400).mean() > 0.3


def test_next_episode_follows_its_predecessor(platform: tuple[Dataset, PlatformTruth]) -> None:
    dataset, truth = platform
    users, videos = _rows(dataset, truth)
    same_user = users[1:] == users[:-1]
    following = truth.next_episode[videos[:-1]]
    after_episode = same_user & (following >= 0)
    assert after_episode.sum() > 1000
    rate = np.mean(videos[1:][after_episode] == following[after_episode])
    chance = 1.0 / SMALL.num_videos
    assert rate > 0.3, rate
    assert rate > 100 * chance


def test_episodes_are_uploaded_in_order(platform: tuple[Dataset, PlatformTruth]) -> None:
    dataset, truth = platform
    upload = dataset.videos.set_index("video_id")["upload_time"].reindex(truth.video_ids)
    series = truth.next_episode >= 0
    assert series.sum() > 100
    upload = upload.to_numpy()
    assert (upload[truth.next_episode[series]] > upload[series]).all()
    episode = truth.video_episode
    assert (episode[truth.next_episode[series]] == episode[series] + 1).all()
    titles = dataset.videos.set_index("video_id")["title"].reindex(truth.video_ids).to_numpy()
    example = np.flatnonzero(series)[0]
    assert f" ep {episode[example]} | " in titles[example]


def test_sessions_binge_creators_and_stay_in_category(
    platform: tuple[Dataset, PlatformTruth],
) -> None:
    dataset, truth = platform
    users, videos = _rows(dataset, truth)
    gap = np.diff(dataset.interactions["timestamp"].to_numpy())
    in_session = (users[1:] == users[:-1]) & (gap < 3600)
    category = truth.video_category[videos]
    same_category = np.mean(category[1:][in_session] == category[:-1][in_session])
    share = np.bincount(category) / len(category)
    assert same_category > 0.5, same_category  # more often than not
    assert same_category > 3 * float(share @ share)
    creator = truth.video_creator[videos]
    same_creator = np.mean(creator[1:][in_session] == creator[:-1][in_session])
    creator_share = np.bincount(creator) / len(creator)
    assert same_creator > 10 * float(creator_share @ creator_share)


def test_watches_concentrate_in_interests_and_engage_more(
    platform: tuple[Dataset, PlatformTruth],
) -> None:
    dataset, truth = platform
    users, videos = _rows(dataset, truth)
    category = truth.video_category[videos]
    slots = truth.interest_categories[users]
    in_interest = (slots == category[:, None]).any(axis=1)
    # Under popularity alone, a user's 1-5 interest slots would get a far smaller share.
    slot_share = np.array(
        [truth.category_popularity[np.unique(row)].sum() for row in truth.interest_categories]
    )
    assert in_interest.mean() > 0.7
    assert in_interest.mean() > slot_share.mean() + 0.3
    duration = dataset.videos.set_index("video_id")["duration"].reindex(
        dataset.interactions["video_id"]
    )
    fraction = dataset.interactions["watch_seconds"].to_numpy() / duration.to_numpy()
    assert fraction[in_interest].mean() - fraction[~in_interest].mean() > 0.2
    interest = truth.interest_at(users, dataset.interactions["timestamp"].to_numpy())
    assert np.allclose(interest.sum(axis=1), 1.0)
    affinity = interest[np.arange(len(users)), category]
    assert np.corrcoef(np.log(affinity), fraction)[0, 1] > 0.3


def test_interests_drift_over_the_span(platform: tuple[Dataset, PlatformTruth]) -> None:
    dataset, truth = platform
    users, videos = _rows(dataset, truth)
    drifting = truth.interest_end[users, -1] > 0.3
    target = truth.interest_categories[users, -1]
    old = (truth.interest_categories[users, :-1] == target[:, None]).any(axis=1)
    chosen = drifting & ~old
    hits = truth.video_category[videos][chosen] == target[chosen]
    when = dataset.interactions["timestamp"].to_numpy()[chosen]
    start, end = truth.span
    early = when < start + (end - start) / 3
    late = when > start + 2 * (end - start) / 3
    assert early.sum() > 500 and late.sum() > 500
    assert hits[late].mean() > 2 * hits[early].mean()


def test_fresh_uploads_get_a_boost() -> None:
    def fresh_share(knobs: PlatformKnobs) -> float:
        dataset = generate_platform(TINY, knobs)
        upload = dataset.videos.set_index("video_id")["upload_time"]
        age = (
            dataset.interactions["timestamp"].to_numpy()
            - upload.reindex(dataset.interactions["video_id"]).to_numpy()
        )
        return float(np.mean(age < 2 * 86_400))

    assert fresh_share(PlatformKnobs()) > fresh_share(PlatformKnobs(fresh_share=0.0)) + 0.05


def test_popularity_is_skewed(platform: tuple[Dataset, PlatformTruth]) -> None:
    dataset, _ = platform
    counts = dataset.interactions["video_id"].value_counts().to_numpy()
    top = counts[: len(counts) // 10].sum() / counts.sum()
    assert top > 0.3, top


def test_titles_and_creators_carry_category_signal(
    platform: tuple[Dataset, PlatformTruth],
) -> None:
    dataset, truth = platform
    videos = dataset.videos.set_index("video_id").reindex(truth.video_ids)
    names = truth.category_names
    words = [set(CATEGORY_WORDS[name]) for name in names]
    title_words = [set(re.findall(r"[a-z]+", title)) for title in videos["title"]]
    hits = [bool(w & words[c]) for w, c in zip(title_words, truth.video_category, strict=True)]
    assert np.mean(hits) > 0.8
    assert all(
        title.endswith(f"| {creator}")
        for title, creator in zip(videos["title"], videos["creator"], strict=True)
    )
    assert (
        videos["categories"].map(lambda c: c[0]).to_numpy()
        == np.array(names, dtype=object)[truth.video_category]
    ).all()
    # Creators publish mostly in one category.
    frame = pd.DataFrame({"creator": truth.video_creator, "category": truth.video_category})
    top_share = frame.groupby("creator")["category"].agg(
        lambda s: s.value_counts().iloc[0] / len(s)
    )
    sizes = frame.groupby("creator").size()
    assert top_share[sizes >= 5].mean() > 0.7


def test_round_trip_through_parquet_layout(tmp_path: Path) -> None:
    dataset = generate_platform(TINY)
    write_dataset(dataset, tmp_path / "data")
    for loaded in (read_dataset(tmp_path / "data"), load_dataset(tmp_path / "data")):
        assert loaded.name == "synthetic"
        pd.testing.assert_frame_equal(loaded.interactions, dataset.interactions)
        pd.testing.assert_frame_equal(loaded.videos, dataset.videos)
        pd.testing.assert_frame_equal(loaded.users, dataset.users)


def test_more_categories_than_named_ones() -> None:
    config = SyntheticConfig(
        num_users=50,
        num_videos=400,
        num_events=1_000,
        num_categories=40,
        num_creators=60,
        days=5,
        seed=1,
    )
    dataset, truth = generate_platform_with_truth(config)
    assert len(set(truth.category_names)) == 40
    assert dataset.videos["categories"].map(lambda c: c[0]).nunique() > 25


def test_titles_tags_and_creators_are_made_of_the_packaged_word_lists() -> None:
    # The word lists are package data (pipelines/data/synthetic_words.json): every word of
    # the generated metadata must come from that file, whatever the seed.
    dataset, truth = generate_platform_with_truth(TINY)
    words = json.loads(resources.files("pipelines.data").joinpath(WORDS_FILE).read_text("utf-8"))
    assert {k: tuple(v) for k, v in words["categories"].items()} == CATEGORY_WORDS
    assert truth.category_names == tuple(words["categories"])[: TINY.num_categories]
    known = set(words["generic"]) | {w for ws in words["categories"].values() for w in ws}
    videos = dataset.videos
    for title in videos["title"]:
        text, _ = title.split(" | ")
        assert {w for w in text.split() if not w.isdigit()} - {"ep"} <= known, title
    assert all(tag[2] in words["categories"][tag[0]] for tag in videos["tags"])
    syllable = "|".join(words["syllables"])
    creator = re.compile(f"({syllable.title()})({syllable}){{2,3}}")
    assert all(creator.fullmatch(name) for name in videos["creator"].unique())


def test_word_lists_ship_in_a_non_editable_install() -> None:
    # A wheel holds only the data files pyproject's package-data names.
    with open(Path(__file__).parents[2] / "pyproject.toml", "rb") as handle:
        package_data = tomllib.load(handle)["tool"]["setuptools"]["package-data"]
    assert any(fnmatch.fnmatch(WORDS_FILE, p) for p in package_data["pipelines.data"])


def test_knobs_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"synthetic knobs\.next_episode"):
        PlatformKnobs(next_episode=1.5)
    with pytest.raises(ConfigError, match=r"synthetic knobs\.min_interests"):
        PlatformKnobs(min_interests=5, max_interests=3)


@pytest.mark.slow
def test_million_videos_ten_million_events() -> None:
    config = SyntheticConfig(
        num_users=200_000, num_videos=1_000_000, num_events=10_000_000, num_creators=50_000
    )
    started = time.perf_counter()
    dataset = generate_platform(config)
    assert time.perf_counter() - started < 180
    assert dataset.num_videos == 1_000_000
    assert abs(len(dataset.interactions) - 10_000_000) < 100_000
