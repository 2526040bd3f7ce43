"""A seeded synthetic video platform with planted, learnable structure.

`generate_platform` draws a catalogue, users and a watch log whose regularities a recommender
can learn and a test can check (see `PlatformKnobs` for the strength of each):

- **Interests.** Each user has a few strong interests over categories (1-4 categories with
  Dirichlet weights, plus a small background spread over all categories by popularity). The
  interests drift over the span: a new category gains weight linearly in time.
- **Creators and series.** Creators publish mostly in one category; part of their videos form
  series whose episodes are uploaded in order. Titles are words from a per-category word list
  plus the creator's name; tags are the category, the format and a category word.
- **Popularity.** Video quality is Zipf-like (times a creator factor); fresh uploads get a boost
  that decays exponentially with age.
- **Sequences.** After an episode the user often watches the next one; within a session users
  binge a creator and more often than not stay in the category; a session starts from the
  user's current interests. Videos are only watched after their upload time and never twice by
  the same user.
- **Engagement.** ``watch_seconds = duration x fraction``; the fraction grows with the user's
  current interest in the video's categories and the video's quality, and depends on the
  device and the duration (TV viewers stay on long videos, phone viewers leave them).
- **Users** have a ``country`` and a ``device`` that correlate weakly with their interests.

Everything is vectorised numpy: the event loop runs over event positions, each step drawing
the next event of every still-active user at once. `generate_platform_with_truth` also returns
the latent variables (`PlatformTruth`) for tests and oracle baselines. `write_dataset` /
`read_dataset` (re-exported from `pipelines.data.layout`) store a dataset as Parquet. The
word lists titles, tags and names are made of are package data (`WORDS_FILE`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from importlib import resources

import numpy as np
import pandas as pd

from core.config import SyntheticConfig, require
from core.schema import Dataset
from pipelines.data.layout import read_dataset, write_dataset

__all__ = [
    "CATEGORY_WORDS",
    "SPAN_START",
    "WORDS_FILE",
    "PlatformKnobs",
    "PlatformTruth",
    "generate_platform",
    "generate_platform_with_truth",
    "read_dataset",
    "write_dataset",
]

logger = logging.getLogger(__name__)

#: Start of the event log: 2024-01-01T00:00:00Z.
SPAN_START = 1_704_067_200
DAY = 86_400

#: Package data file holding the word lists: ``categories`` (name -> title words, in the
#: order categories are used), ``generic`` (title openers) and ``syllables`` (made-up words
#: and creator names). Changing it changes every generated platform.
WORDS_FILE = "synthetic_words.json"


def _load_words() -> tuple[dict[str, tuple[str, ...]], tuple[str, ...], tuple[str, ...]]:
    """Reads `WORDS_FILE` from the package and checks the shapes the generator relies on.

    Returns:
        Category name -> its title words (every category the same number), the generic
        title words and the syllables (distinct).

    Raises:
        RuntimeError: The file is malformed (a broken install or a bad edit, not bad input).
    """
    path = resources.files(__package__ or "pipelines.data").joinpath(WORDS_FILE)
    data = json.loads(path.read_text(encoding="utf-8"))
    categories = {str(name): tuple(words) for name, words in data["categories"].items()}
    syllables = tuple(data["syllables"])
    # Title words are drawn from a [C, W] array, so every category needs the same W; made-up
    # words and creator names are syllable codes, so a repeated syllable would repeat names.
    if len({len(words) for words in categories.values()}) != 1 or not categories:
        raise RuntimeError(f"{WORDS_FILE}: every category must have the same number of words")
    if len(set(syllables)) != len(syllables):
        raise RuntimeError(f"{WORDS_FILE}: the syllables must be distinct")
    return categories, tuple(data["generic"]), syllables


#: Category names and the words their titles are made of (extra categories get made-up words).
CATEGORY_WORDS: dict[str, tuple[str, ...]]
CATEGORY_WORDS, _GENERIC_WORDS, _SYLLABLES = _load_words()
#: Video formats: name, duration multiplier, share.
_FORMATS = (
    ("short", 0.15, 0.20),
    ("clip", 0.6, 0.30),
    ("episode", 1.0, 0.25),
    ("tutorial", 1.3, 0.12),
    ("stream", 4.0, 0.05),
    ("feature", 2.5, 0.08),
)
_COUNTRIES = ("US", "IN", "BR", "GB", "DE", "JP", "MX", "FR", "ID", "NG")
_COUNTRY_SHARE = (0.25, 0.18, 0.1, 0.08, 0.07, 0.07, 0.07, 0.06, 0.07, 0.05)
_DEVICES = ("mobile", "desktop", "tv", "tablet")
_DEVICE_SHARE = (0.55, 0.25, 0.12, 0.08)
#: Watch-fraction logit per unit of log(duration / 10 min), by device.
_DEVICE_DURATION_SLOPE = (-0.45, -0.1, 0.35, -0.2)


@dataclasses.dataclass(frozen=True)
class PlatformKnobs:
    """Strength of each planted structure (defaults give a learnable but noisy platform).

    Attributes:
        min_interests: Fewest strong interest categories per user.
        max_interests: Most strong interest categories per user.
        background_interest: Share of a user's choices drawn from global category popularity
            instead of the user's interests (exploration).
        drift: Mean share of a user's interest weight that has moved to a new category by the
            end of the span (per user uniform in ``[0, 2 * drift]``, capped at 0.9).
        creator_focus: Probability that a video is in its creator's main category.
        second_category: Probability that a video has a second category.
        series_share: Share of videos that are episodes of a series.
        mean_series_length: Mean episodes per series (geometric).
        back_catalogue: Share of videos uploaded before the span.
        popularity_skew: Zipf exponent of video quality (0 = all equal).
        next_episode: Probability of watching the next episode right after an episode, when it
            is uploaded and not yet watched.
        creator_binge: Within a session, probability of another video by the same creator.
        same_category: Within a session, probability of staying in the previous video's main
            category (when neither of the above applies).
        fresh_share: Share of category draws restricted to recent uploads (a window whose
            length is exponential), giving a boost that decays with age.
        fresh_decay_days: Mean of that window: the decay time of the freshness boost.
        mean_session_length: Mean events per session (sessions end sooner after a poorly
            watched video).
        activity_sigma: Log-normal sigma of events per user (heavy tail).
        engagement_affinity: Weight of log(user interest in the video's category) in the
            watch-fraction logit.
        engagement_noise: Standard deviation of the noise in the watch-fraction logit.
    """

    min_interests: int = 1
    max_interests: int = 4
    background_interest: float = 0.08
    drift: float = 0.3
    creator_focus: float = 0.85
    second_category: float = 0.3
    series_share: float = 0.35
    mean_series_length: float = 6.0
    back_catalogue: float = 0.35
    popularity_skew: float = 0.9
    next_episode: float = 0.6
    creator_binge: float = 0.15
    same_category: float = 0.6
    fresh_share: float = 0.2
    fresh_decay_days: float = 2.0
    mean_session_length: float = 8.0
    activity_sigma: float = 1.0
    engagement_affinity: float = 0.55
    engagement_noise: float = 0.8

    def __post_init__(self) -> None:
        f = "synthetic knobs"
        require(
            1 <= self.min_interests <= self.max_interests,
            f"{f}.min_interests",
            f"must be in [1, max_interests={self.max_interests}], got {self.min_interests}",
        )
        for name in (
            "background_interest",
            "drift",
            "creator_focus",
            "second_category",
            "series_share",
            "back_catalogue",
            "next_episode",
            "creator_binge",
            "same_category",
            "fresh_share",
        ):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"{f}.{name}", f"must be in [0, 1], got {value}")
        require(self.mean_series_length >= 1.0, f"{f}.mean_series_length", "must be >= 1")
        require(self.popularity_skew >= 0.0, f"{f}.popularity_skew", "must be >= 0")
        require(self.fresh_decay_days > 0.0, f"{f}.fresh_decay_days", "must be > 0")
        require(self.mean_session_length >= 1.0, f"{f}.mean_session_length", "must be >= 1")
        require(self.activity_sigma >= 0.0, f"{f}.activity_sigma", "must be >= 0")
        require(self.engagement_noise >= 0.0, f"{f}.engagement_noise", "must be >= 0")


@dataclasses.dataclass(frozen=True)
class PlatformTruth:
    """The latent variables behind a generated platform (rows follow the ids arrays).

    Attributes:
        category_names: ``[C]`` category names.
        video_ids: ``[V] int64`` ids, row ``i`` of every per-video array.
        video_category: ``[V] int64`` main category index.
        video_creator: ``[V] int64`` creator index.
        video_series: ``[V] int64`` series index, -1 for standalone videos.
        video_episode: ``[V] int64`` 1-based episode number, 0 for standalone videos.
        next_episode: ``[V] int64`` row of the next episode, -1 if none.
        video_quality: ``[V] float64`` popularity weight (sums to 1).
        user_ids: ``[U] int64`` ids, row ``j`` of every per-user array.
        interest_categories: ``[U, S] int64`` category of each interest slot (the last slot is
            the category the user drifts to).
        interest_start: ``[U, S] float64`` slot weights at the start of the span.
        interest_end: ``[U, S] float64`` slot weights at the end of the span.
        category_popularity: ``[C] float64`` global category shares (background interest).
        span: ``(start, end)`` of the event log in seconds since the epoch.
        mechanism_counts: How many events each mechanism produced.
    """

    category_names: tuple[str, ...]
    video_ids: np.ndarray
    video_category: np.ndarray
    video_creator: np.ndarray
    video_series: np.ndarray
    video_episode: np.ndarray
    next_episode: np.ndarray
    video_quality: np.ndarray
    user_ids: np.ndarray
    interest_categories: np.ndarray
    interest_start: np.ndarray
    interest_end: np.ndarray
    category_popularity: np.ndarray
    span: tuple[int, int]
    mechanism_counts: dict[str, int]

    def interest_at(self, user_rows: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        """Each user's interest distribution over categories at a time, ``[n, C] float64``.

        Includes the background share, so rows sum to 1.
        """
        user_rows = np.asarray(user_rows, dtype=np.int64)
        lam = _drift_fraction(np.asarray(timestamps, dtype=np.float64), self.span)
        weights = _slot_weights(self.interest_start[user_rows], self.interest_end[user_rows], lam)
        num_categories = len(self.category_names)
        out = np.zeros((len(user_rows), num_categories))
        rows = np.repeat(np.arange(len(user_rows)), weights.shape[1])
        np.add.at(out, (rows, self.interest_categories[user_rows].ravel()), weights.ravel())
        background = 1.0 - out.sum(axis=1, keepdims=True)
        return out + background * self.category_popularity[None, :]


def generate_platform(
    config: SyntheticConfig | None = None, knobs: PlatformKnobs | None = None
) -> Dataset:
    """Generates the synthetic platform (see the module doc for what is planted).

    Args:
        config: Sizes, span and seed; defaults to ``SyntheticConfig()``.
        knobs: Strength of the planted structures; defaults to ``PlatformKnobs()``.

    Returns:
        A `Dataset` named ``"synthetic"``: watch events (``event`` ``"watch"``, ``rating``
        NaN, ``watch_seconds`` set), the whole catalogue (some videos never watched) and users
        with ``country`` and ``device``. The same config always gives identical frames.
    """
    return generate_platform_with_truth(config, knobs)[0]


def generate_platform_with_truth(
    config: SyntheticConfig | None = None, knobs: PlatformKnobs | None = None
) -> tuple[Dataset, PlatformTruth]:
    """Like `generate_platform`, also returning the latent variables."""
    config = config or SyntheticConfig()
    knobs = knobs or PlatformKnobs()
    started = time.perf_counter()
    span = (SPAN_START, SPAN_START + config.days * DAY)
    setting = _Setting(config, knobs, np.random.default_rng(config.seed), span)
    catalogue = _Catalogue.draw(setting)
    people = _Users.draw(setting, catalogue)
    events, counts = _simulate(setting, catalogue, people)
    drawn = time.perf_counter()
    if len(events["time"]) < 0.95 * config.num_events:
        logger.warning(
            "synthetic: only %d of %d events could be placed without repeat watches or watches "
            "before upload; raise synthetic.num_videos or lower synthetic.num_events",
            len(events["time"]),
            config.num_events,
        )

    user_ids = people.user_ids
    video_ids = catalogue.video_ids
    interactions = pd.DataFrame(
        {
            "user_id": user_ids[events["user"]],
            "video_id": video_ids[events["video"]],
            "timestamp": events["time"],
            "rating": np.full(len(events["time"]), np.nan, dtype=np.float32),
            "watch_seconds": events["watch"],
            "event": np.full(len(events["time"]), "watch", dtype=object),
        }
    )
    dataset = Dataset(
        name="synthetic",
        interactions=interactions,
        videos=catalogue.frame(),
        users=people.frame(),
    )
    truth = PlatformTruth(
        category_names=catalogue.category_names,
        video_ids=video_ids,
        video_category=catalogue.category,
        video_creator=catalogue.creator,
        video_series=catalogue.series,
        video_episode=catalogue.episode,
        next_episode=catalogue.next_episode,
        video_quality=catalogue.quality,
        user_ids=user_ids,
        interest_categories=people.slot_categories,
        interest_start=people.weights_start,
        interest_end=people.weights_end,
        category_popularity=catalogue.category_popularity,
        span=span,
        mechanism_counts=counts,
    )
    logger.info(
        "synthetic platform: %d users, %d videos, %d events; draw %.1fs, validate %.1fs; %s",
        config.num_users,
        config.num_videos,
        len(dataset.interactions),
        drawn - started,
        time.perf_counter() - drawn,
        counts,
    )
    return dataset, truth


@dataclasses.dataclass(frozen=True)
class _Setting:
    """What every stage of one generation reads.

    The stages draw from the one ``rng`` in a fixed order (catalogue, users, events); that
    order, not only the seed, is what makes a config reproduce its platform bit for bit.

    Attributes:
        config: Sizes, span and seed.
        knobs: Strength of the planted structures.
        rng: The generator seeded with ``config.seed``.
        span: ``(start, end)`` of the event log in seconds since the epoch.
    """

    config: SyntheticConfig
    knobs: PlatformKnobs
    rng: np.random.Generator
    span: tuple[int, int]


# --------------------------------------------------------------------------------------------
# Catalogue
# --------------------------------------------------------------------------------------------


def _category_words(
    num_categories: int, rng: np.random.Generator
) -> tuple[tuple[str, ...], np.ndarray]:
    """Category names and a ``[C, W]`` object array of their title words."""
    named = list(CATEGORY_WORDS.items())[:num_categories]
    width = len(named[0][1])
    names = [name for name, _ in named]
    words = [list(w) for _, w in named]
    extra = num_categories - len(named)
    if extra > 0:
        # Made-up but distinct words for categories past the named ones.
        syllables = np.array(_SYLLABLES, dtype=object)
        codes = rng.permutation(len(_SYLLABLES) ** 3)[: extra * width]
        digits = np.stack(
            [
                codes // len(_SYLLABLES) ** 2,
                codes // len(_SYLLABLES) % len(_SYLLABLES),
                codes % len(_SYLLABLES),
            ]
        )
        made = syllables[digits[0]] + syllables[digits[1]] + syllables[digits[2]]
        for i in range(extra):
            names.append(f"category{len(named) + i + 1}")
            words.append(list(made[i * width : (i + 1) * width]))
    return tuple(names), np.array(words, dtype=object)


def _creator_names(num_creators: int, rng: np.random.Generator) -> np.ndarray:
    base = len(_SYLLABLES)
    parts = 3 if num_creators <= base**3 else 4
    codes = rng.choice(base**parts, size=num_creators, replace=False)
    syllables = np.array(_SYLLABLES, dtype=object)
    capital = np.array([s.capitalize() for s in _SYLLABLES], dtype=object)
    names = capital[codes // base ** (parts - 1) % base]
    for k in range(parts - 2, -1, -1):
        names = names + syllables[codes // base**k % base]
    return names


def _group_starts(sorted_groups: np.ndarray) -> np.ndarray:
    """Boolean mask of the first row of each run in a sorted group array."""
    starts = np.ones(len(sorted_groups), dtype=bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    return starts


@dataclasses.dataclass
class _Catalogue:
    category_names: tuple[str, ...]
    category_popularity: np.ndarray
    video_ids: np.ndarray
    category: np.ndarray
    second_category: np.ndarray
    creator: np.ndarray
    creator_names: np.ndarray
    series: np.ndarray
    episode: np.ndarray
    next_episode: np.ndarray
    quality: np.ndarray
    duration: np.ndarray
    upload: np.ndarray
    titles: np.ndarray
    tags: list[tuple[str, ...]]

    @classmethod
    def draw(cls, setting: _Setting) -> _Catalogue:
        """Draws the catalogue: categories, creators, series, uploads, quality, metadata."""
        config, knobs, rng, span = setting.config, setting.knobs, setting.rng, setting.span
        num_videos, num_categories = config.num_videos, config.num_categories
        num_creators = config.num_creators
        names, words = _category_words(num_categories, rng)
        popularity = rng.permutation(np.arange(1, num_categories + 1) ** -0.7)
        popularity /= popularity.sum()

        # Creators: a main category, a productivity, a quality and a favourite format.
        creator_category = rng.choice(num_categories, size=num_creators, p=popularity)
        productivity = rng.lognormal(0.0, 1.0, size=num_creators)
        counts = 1 + rng.multinomial(num_videos - num_creators, productivity / productivity.sum())
        creator = np.repeat(np.arange(num_creators), counts)  # videos sorted by creator
        creator_quality = rng.lognormal(0.0, 0.5, size=num_creators)
        format_share = np.array([s for _, _, s in _FORMATS])
        creator_format = rng.choice(len(_FORMATS), size=num_creators, p=format_share)

        category = np.where(
            rng.random(num_videos) < knobs.creator_focus,
            creator_category[creator],
            rng.choice(num_categories, size=num_videos, p=popularity),
        )

        # Series: consecutive runs of a creator's series videos, in the series' category.
        in_series = rng.random(num_videos) < knobs.series_share
        series_rows = np.flatnonzero(in_series)
        breaks = rng.random(len(series_rows)) < 1.0 / knobs.mean_series_length
        if len(series_rows):
            breaks |= _group_starts(creator[series_rows])
        series = np.full(num_videos, -1, dtype=np.int64)
        series[series_rows] = np.cumsum(breaks) - 1
        first_of_series = series_rows[breaks]
        category[series_rows] = category[first_of_series][series[series_rows]]
        episode = np.zeros(num_videos, dtype=np.int64)
        series_start_index = np.flatnonzero(breaks)
        episode[series_rows] = (
            np.arange(len(series_rows)) - series_start_index[series[series_rows]] + 1
        )

        # Upload times: back catalogue before the span, the rest spread over it; episodes
        # follow each other by exponential gaps and the whole series ends inside the span.
        start, end = span
        length = end - start
        before = rng.random(num_videos) < knobs.back_catalogue
        upload = np.where(
            before,
            start - np.minimum(rng.exponential(180 * DAY, size=num_videos), 5 * 365 * DAY),
            start + rng.random(num_videos) * length,
        )
        if len(series_rows):
            gap_mean = float(np.clip(length / (2 * knobs.mean_series_length), DAY / 4, 7 * DAY))
            gaps = rng.exponential(gap_mean, size=len(series_rows)) + 3600.0
            gaps[breaks] = 0.0
            cumulative = np.cumsum(gaps)
            offset = cumulative - cumulative[series_start_index][series[series_rows]]
            times = upload[first_of_series][series[series_rows]] + offset
            last = np.maximum.reduceat(times, series_start_index)
            shift = np.maximum(0.0, last - (end - 3600.0))
            upload[series_rows] = times - shift[series[series_rows]]
        upload = np.floor(upload)

        next_episode = np.full(num_videos, -1, dtype=np.int64)
        if len(series_rows) > 1:
            same = series[series_rows[1:]] == series[series_rows[:-1]]
            next_episode[series_rows[:-1][same]] = series_rows[1:][same]

        second = np.where(
            rng.random(num_videos) < knobs.second_category,
            (category + 1 + rng.integers(0, max(num_categories - 1, 1), size=num_videos))
            % num_categories,
            -1,
        )
        if num_categories == 1:
            second[:] = -1

        # Quality: Zipf over a random ranking, times the creator's quality; episodes of a
        # series fade with the episode number (pilots are watched most).
        ranks = rng.permutation(num_videos) + 1.0
        quality = ranks**-knobs.popularity_skew * creator_quality[creator]
        quality *= np.where(episode > 0, 0.9 ** np.maximum(episode - 1, 0), 1.0)
        quality /= quality.sum()

        # Formats and durations: log-normal around a per-category median.
        video_format = np.where(
            rng.random(num_videos) < 0.7,
            creator_format[creator],
            rng.choice(len(_FORMATS), size=num_videos, p=format_share),
        )
        category_median = np.exp(rng.uniform(np.log(120.0), np.log(1500.0), num_categories))
        multiplier = np.array([m for _, m, _ in _FORMATS])
        duration = category_median[category] * multiplier[video_format]
        duration *= rng.lognormal(0.0, 0.5, size=num_videos)
        is_short = video_format == 0
        duration = np.where(
            is_short, np.clip(duration, 8.0, 59.0), np.clip(duration, 30.0, 6 * 3600.0)
        )
        duration = np.round(duration).astype(np.float32)

        # Titles: category words (sometimes another category's), a generic word, the creator.
        creator_names = _creator_names(num_creators, rng)
        width = words.shape[1]
        generic = np.array(_GENERIC_WORDS, dtype=object)

        def word(rows: np.ndarray) -> np.ndarray:
            noise = rng.random(len(rows)) < 0.15
            from_category = np.where(noise, rng.integers(0, num_categories, len(rows)), rows)
            return words[from_category, rng.integers(0, width, len(rows))]

        standalone = generic[rng.integers(0, len(generic), num_videos)] + " " + word(category)
        standalone = standalone + " " + word(category)
        titles = standalone + " | " + creator_names[creator]
        if len(series_rows):
            series_category = category[first_of_series]
            series_name = word(series_category) + " " + word(series_category)
            episode_text = episode[series_rows].astype(str).astype(object)
            titles[series_rows] = (
                series_name[series[series_rows]]
                + " ep "
                + episode_text
                + " | "
                + creator_names[creator[series_rows]]
            )

        format_names = np.array([n for n, _, _ in _FORMATS], dtype=object)
        category_names = np.array(names, dtype=object)
        tags = list(
            zip(
                category_names[category].tolist(),
                format_names[video_format].tolist(),
                words[category, rng.integers(0, width, num_videos)].tolist(),
                strict=True,
            )
        )
        video_ids = rng.permutation(num_videos).astype(np.int64) + 1
        return cls(
            category_names=names,
            category_popularity=popularity,
            video_ids=video_ids,
            category=category.astype(np.int64),
            second_category=second.astype(np.int64),
            creator=creator.astype(np.int64),
            creator_names=creator_names,
            series=series,
            episode=episode,
            next_episode=next_episode,
            quality=quality,
            duration=duration,
            upload=upload,
            titles=titles,
            tags=tags,
        )

    def frame(self) -> pd.DataFrame:
        names = np.array(self.category_names, dtype=object)
        main = names[self.category].tolist()
        second = np.where(self.second_category >= 0, self.second_category, 0)
        second_names = names[second].tolist()
        has_second = (self.second_category >= 0).tolist()
        categories = [
            (a, b) if two else (a,)
            for a, b, two in zip(main, second_names, has_second, strict=True)
        ]
        return pd.DataFrame(
            {
                "video_id": self.video_ids,
                "title": self.titles,
                "categories": categories,
                "tags": self.tags,
                "year": np.full(len(self.video_ids), np.nan, dtype=np.float32),
                "duration": self.duration,
                "creator": self.creator_names[self.creator],
                "upload_time": self.upload.astype(np.float64),
            }
        )


# --------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------


def _drift_fraction(timestamps: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    start, end = span
    return np.clip((timestamps - start) / max(end - start, 1), 0.0, 1.0)


def _slot_weights(start: np.ndarray, end: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Interest slot weights at drift fraction ``lam`` (linear between start and end)."""
    return start + (end - start) * lam[:, None]


@dataclasses.dataclass
class _Users:
    user_ids: np.ndarray
    slot_categories: np.ndarray  # [U, S]
    weights_start: np.ndarray  # [U, S], rows sum to 1 - background
    weights_end: np.ndarray
    country: np.ndarray
    device: np.ndarray
    num_events: np.ndarray
    window_start: np.ndarray
    window_end: np.ndarray

    @classmethod
    def draw(cls, setting: _Setting, catalogue: _Catalogue) -> _Users:
        """Draws the users: interests and their drift, country, device, activity, windows."""
        config, knobs, rng, span = setting.config, setting.knobs, setting.rng, setting.span
        num_users, num_categories = config.num_users, config.num_categories
        popularity = catalogue.category_popularity
        max_slots = min(knobs.max_interests, num_categories)

        # A few strong interests: Gumbel top-k over category popularity.
        scores = np.log(popularity)[None, :] + rng.gumbel(size=(num_users, num_categories))
        order = np.argsort(-scores, axis=1)
        chosen = order[:, :max_slots]
        drift_target = order[:, max_slots] if num_categories > max_slots else order[:, 0]
        # The last slot is the category the user drifts to.
        categories = np.concatenate([chosen, drift_target[:, None]], axis=1).astype(np.int64)
        low = min(knobs.min_interests, max_slots)
        count = rng.integers(low, max_slots + 1, size=num_users)
        active = np.arange(max_slots)[None, :] < count[:, None]
        raw = rng.gamma(1.0, size=(num_users, max_slots)) * active
        strong = raw / raw.sum(axis=1, keepdims=True)
        focus = 1.0 - knobs.background_interest
        drift = np.minimum(rng.uniform(0.0, 2.0 * knobs.drift, size=num_users), 0.9)
        weights_start = np.concatenate([strong, np.zeros((num_users, 1))], axis=1) * focus
        weights_end = (
            np.concatenate([strong * (1.0 - drift[:, None]), drift[:, None]], axis=1) * focus
        )

        # Country and device: weakly tied to the top interest.
        top = categories[:, 0]
        home_country = rng.choice(len(_COUNTRIES), size=num_categories, p=_COUNTRY_SHARE)
        country = np.where(
            rng.random(num_users) < 0.3,
            home_country[top],
            rng.choice(len(_COUNTRIES), size=num_users, p=_COUNTRY_SHARE),
        )
        home_device = rng.choice(len(_DEVICES), size=num_categories, p=_DEVICE_SHARE)
        device = np.where(
            rng.random(num_users) < 0.3,
            home_device[top],
            rng.choice(len(_DEVICES), size=num_users, p=_DEVICE_SHARE),
        )

        # Activity: heavy-tailed events per user summing to num_events, at least 5 each, and
        # at most what the catalogue can offer.
        target = config.num_events
        mean = target / num_users
        cap = int(max(5, min(0.5 * config.num_videos, 20.0 * mean, target)))
        raw_activity = rng.lognormal(0.0, knobs.activity_sigma, size=num_users)
        low_scale, high_scale = 0.0, 1.0
        while np.clip(np.round(raw_activity * high_scale), 5, cap).sum() < target:
            high_scale *= 2.0
            if high_scale > 1e12:
                break
        for _ in range(60):
            middle = (low_scale + high_scale) / 2
            if np.clip(np.round(raw_activity * middle), 5, cap).sum() < target:
                low_scale = middle
            else:
                high_scale = middle
        num_events = np.clip(np.round(raw_activity * high_scale), 5, cap).astype(np.int64)
        excess = int(num_events.sum() - target)
        if excess > 0:
            room = np.flatnonzero(num_events > 5)
            take = rng.choice(room, size=min(excess, len(room)), replace=False)
            num_events[take] -= 1

        # Active windows: most users are there from the start; some join late, some leave.
        start, end = span
        length = end - start
        min_window = min(DAY, length)
        late = rng.random(num_users) < 0.25
        window_start = np.where(
            late,
            start + rng.random(num_users) * (length - min_window),
            start + rng.random(num_users) * min(DAY / 2, length / 4),
        )
        leaves = rng.random(num_users) < 0.15
        window_end = np.where(
            leaves,
            window_start + min_window + rng.random(num_users) * (end - window_start - min_window),
            float(end),
        )
        user_ids = rng.permutation(num_users).astype(np.int64) + 1
        return cls(
            user_ids=user_ids,
            slot_categories=categories,
            weights_start=weights_start,
            weights_end=weights_end,
            country=np.array(_COUNTRIES, dtype=object)[country],
            device=device.astype(np.int64),
            num_events=num_events,
            window_start=window_start,
            window_end=window_end,
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "user_id": self.user_ids,
                "country": self.country,
                "device": np.array(_DEVICES, dtype=object)[self.device],
            }
        )


# --------------------------------------------------------------------------------------------
# Event simulation
# --------------------------------------------------------------------------------------------


class _PairSet:
    """A vectorised open-addressing hash set of non-negative int64 keys."""

    def __init__(self, capacity: int) -> None:
        size = 1 << max(10, int(np.ceil(np.log2(max(capacity, 1) * 2.0))))
        self._table = np.full(size, -1, dtype=np.int64)
        self._mask = np.uint64(size - 1)
        self._shift = np.uint64(64 - int(np.log2(size)))

    def _slots(self, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            hashed = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        return (hashed >> self._shift).astype(np.int64)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        pending = np.arange(len(keys))
        slots = self._slots(keys)
        mask = int(self._mask)
        while len(pending):
            held = self._table[slots[pending]]
            hit = held == keys[pending]
            found[pending[hit]] = True
            go_on = ~hit & (held != -1)
            pending = pending[go_on]
            slots[pending] = (slots[pending] + 1) & mask
        return found

    def add(self, keys: np.ndarray) -> None:
        """Adds distinct keys that are not in the set yet."""
        pending = np.arange(len(keys))
        slots = self._slots(keys)
        mask = int(self._mask)
        while len(pending):
            free = self._table[slots[pending]] == -1
            candidates = pending[free]
            _, first = np.unique(slots[candidates], return_index=True)
            winners = candidates[first]
            self._table[slots[winners]] = keys[winners]
            placed = np.zeros(len(keys), dtype=bool)
            placed[winners] = True
            pending = pending[~placed[pending]]
            occupied = self._table[slots[pending]] != -1
            slots[pending[occupied]] = (slots[pending[occupied]] + 1) & mask


class _RangeSampler:
    """Weighted draws among the videos of a group uploaded in a time range.

    Videos are sorted by (group, upload time); a query ``(group, from, to)`` is a contiguous
    slice found by binary search, and a weighted draw inside it inverts the cumulative weights.
    """

    _SHIFT = 36  # 2**36 s is over 2000 years of upload times

    def __init__(self, groups: np.ndarray, upload: np.ndarray, weights: np.ndarray) -> None:
        self._origin = int(upload.min())
        relative = (upload - self._origin).astype(np.int64)
        self.order = np.lexsort((relative, groups))
        self._keys = (groups[self.order].astype(np.int64) << self._SHIFT) | relative[self.order]
        self._cumulative = np.concatenate([[0.0], np.cumsum(weights[self.order])])

    def bounds(
        self, groups: np.ndarray, since: np.ndarray, until: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slice ``[lo, hi)`` of each group's videos uploaded in ``[since, until]``."""
        base = groups.astype(np.int64) << self._SHIFT
        limit = (1 << self._SHIFT) - 1
        low = np.ceil(np.clip(since - self._origin, 0, limit)).astype(np.int64)
        high = np.floor(np.clip(until - self._origin, -1, limit)).astype(np.int64)
        lo = np.searchsorted(self._keys, base | low, side="left")
        hi = np.where(
            high < 0, lo, np.searchsorted(self._keys, base | np.maximum(high, 0), side="right")
        )
        return lo, np.maximum(hi, lo)

    def draw(self, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A weighted video row from each non-empty slice (callers drop empty ones)."""
        c = self._cumulative
        u = c[lo] + rng.random(len(lo)) * (c[hi] - c[lo])
        position = np.searchsorted(c, u, side="right") - 1
        position = np.clip(position, lo, np.maximum(hi - 1, lo))
        return self.order[np.minimum(position, len(self.order) - 1)]


def _simulate(
    setting: _Setting, catalogue: _Catalogue, people: _Users
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Draws every user's watch sequence, one event position at a time for all users."""
    config, knobs, rng, span = setting.config, setting.knobs, setting.rng, setting.span
    num_videos = config.num_videos
    num_categories = config.num_categories
    upload = catalogue.upload
    quality = catalogue.quality
    by_category = _RangeSampler(catalogue.category, upload, quality)
    by_creator = _RangeSampler(catalogue.creator, upload, quality)
    everywhere = _RangeSampler(np.zeros(num_videos, dtype=np.int64), upload, quality)
    uniform = _RangeSampler(np.zeros(num_videos, dtype=np.int64), upload, np.ones(num_videos))
    category_cdf = np.cumsum(catalogue.category_popularity)
    log_quality = np.log(quality * num_videos)
    log_duration = np.log(catalogue.duration.astype(np.float64) / 600.0)
    device_slope = np.array(_DEVICE_DURATION_SLOPE)
    fresh_mean = knobs.fresh_decay_days * DAY
    end_session = 1.0 / knobs.mean_session_length

    # Users sorted by activity, most active first: the users still active at step s are a
    # prefix, so every per-step array is a slice.
    by_activity = np.argsort(-people.num_events, kind="stable")
    steps_of = people.num_events[by_activity]
    slots = people.slot_categories[by_activity]
    w_start = people.weights_start[by_activity]
    w_end = people.weights_end[by_activity]
    window_start = people.window_start[by_activity]
    window_end = people.window_end[by_activity]
    device = people.device[by_activity]
    num_users = len(by_activity)
    max_steps = int(steps_of[0]) if num_users else 0
    active_at = np.searchsorted(-steps_of, -np.arange(max_steps), side="left")

    seen = _PairSet(int(people.num_events.sum()))
    previous = np.full(num_users, -1, dtype=np.int64)
    clock = window_start.copy()
    previous_fraction = np.full(num_users, 0.5)
    counts = dict.fromkeys(
        ("next_episode", "creator", "same_category", "interest", "retry", "fallback", "dropped"),
        0,
    )
    out_user: list[np.ndarray] = []
    out_video: list[np.ndarray] = []
    out_time: list[np.ndarray] = []
    out_watch: list[np.ndarray] = []
    no_video = np.int64(-1)

    def interest_categories(rows: np.ndarray, lam: np.ndarray) -> np.ndarray:
        weights = _slot_weights(w_start[rows], w_end[rows], lam)
        cumulative = np.cumsum(weights, axis=1)
        u = rng.random(len(rows))
        pick = (cumulative < u[:, None]).sum(axis=1)
        inside = pick < weights.shape[1]
        chosen = np.empty(len(rows), dtype=np.int64)
        chosen[inside] = slots[rows[inside], pick[inside]]
        outside = ~inside  # the background share: global category popularity
        chosen[outside] = np.minimum(
            np.searchsorted(category_cdf, rng.random(int(outside.sum())), side="right"),
            num_categories - 1,
        )
        return chosen

    def from_categories(categories: np.ndarray, now: np.ndarray) -> np.ndarray:
        lo, hi = by_category.bounds(categories, np.full(len(now), -np.inf), now)
        fresh = rng.random(len(now)) < knobs.fresh_share
        if fresh.any():
            since = now[fresh] - rng.exponential(fresh_mean, size=int(fresh.sum()))
            fresh_lo, fresh_hi = by_category.bounds(categories[fresh], since, now[fresh])
            usable = fresh_hi > fresh_lo
            rows = np.flatnonzero(fresh)[usable]
            lo[rows] = fresh_lo[usable]
            hi[rows] = fresh_hi[usable]
        picked = np.full(len(now), no_video)
        ok = hi > lo
        picked[ok] = by_category.draw(lo[ok], hi[ok], rng)
        return picked

    for step in range(max_steps):
        active = int(active_at[step])
        rows = np.arange(active)
        # Time: sessions start at stratified slots over the user's window; inside a session
        # the next video starts when the previous one was left.
        slot_time = window_start[:active] + (window_end[:active] - window_start[:active]) * (
            (step + rng.random(active)) / steps_of[:active]
        )
        leave = np.clip(end_session * (1.6 - 1.2 * previous_fraction[:active]), 0.02, 1.0)
        new_session = (previous[:active] < 0) | (rng.random(active) < leave)
        after_previous = clock[:active] + rng.exponential(20.0, size=active) + 2.0
        now = np.where(new_session, np.maximum(slot_time, after_previous + 600.0), after_previous)
        now = np.floor(now)
        lam_now = _drift_fraction(now, span)

        chosen = np.full(active, no_video)
        how = np.zeros(active, dtype=np.int8)  # 1 next episode, 2 creator, 3 category, 4 interest
        prev = previous[:active]
        has_prev = prev >= 0
        prev_safe = np.where(has_prev, prev, 0)

        following = np.where(has_prev, catalogue.next_episode[prev_safe], -1)
        following_ok = following >= 0
        following_ok[following_ok] &= upload[following[following_ok]] <= now[following_ok]
        take_next = following_ok & (rng.random(active) < knobs.next_episode)
        chosen[take_next] = following[take_next]
        how[take_next] = 1

        in_session = has_prev & ~new_session & ~take_next
        binge = in_session & (rng.random(active) < knobs.creator_binge)
        if binge.any():
            creators = catalogue.creator[prev_safe[binge]]
            lo, hi = by_creator.bounds(creators, np.full(int(binge.sum()), -np.inf), now[binge])
            ok = hi > lo
            rows_binge = np.flatnonzero(binge)[ok]
            chosen[rows_binge] = by_creator.draw(lo[ok], hi[ok], rng)
            how[rows_binge] = 2

        rest = chosen < 0
        stay = rest & in_session & (rng.random(active) < knobs.same_category)
        category = np.empty(active, dtype=np.int64)
        category[stay] = catalogue.category[prev_safe[stay]]
        explore = rest & ~stay
        category[explore] = interest_categories(rows[explore], lam_now[explore])
        rest_rows = np.flatnonzero(rest)
        chosen[rest_rows] = from_categories(category[rest_rows], now[rest_rows])
        how[rest_rows] = np.where(stay[rest_rows], 3, 4)

        # Refuse repeats and unavailable draws: redraw from the interests a few times, then
        # from global popularity, then uniformly among uploaded videos; else drop the event.
        user_rows = by_activity[:active].astype(np.int64)
        keys = user_rows * num_videos + np.maximum(chosen, 0)
        bad = (chosen < 0) | seen.contains(keys)
        for attempt in range(8):
            if not bad.any():
                break
            redo = np.flatnonzero(bad)
            counts["retry" if attempt < 5 else "fallback"] += len(redo)
            if attempt < 5:
                redraw = from_categories(interest_categories(redo, lam_now[redo]), now[redo])
                how[redo] = 4
            else:
                sampler = everywhere if attempt < 7 else uniform
                zeros = np.zeros(len(redo), dtype=np.int64)
                lo, hi = sampler.bounds(zeros, np.full(len(redo), -np.inf), now[redo])
                redraw = np.full(len(redo), no_video)
                ok = hi > lo
                redraw[ok] = sampler.draw(lo[ok], hi[ok], rng)
                how[redo] = 4
            chosen[redo] = redraw
            keys[redo] = user_rows[redo] * num_videos + np.maximum(redraw, 0)
            bad[redo] = (redraw < 0) | seen.contains(keys[redo])
        keep = ~bad
        counts["dropped"] += int(bad.sum())
        kept_rows = np.flatnonzero(keep)
        videos = chosen[kept_rows]
        seen.add(keys[kept_rows])
        for code, name in (
            (1, "next_episode"),
            (2, "creator"),
            (3, "same_category"),
            (4, "interest"),
        ):
            counts[name] += int(np.sum(how[kept_rows] == code))

        # Engagement: interest in the video's categories, quality, device x duration, noise.
        lam_kept = lam_now[kept_rows]
        weights = _slot_weights(w_start[kept_rows], w_end[kept_rows], lam_kept)
        user_slots = slots[kept_rows]
        main = catalogue.category[videos]
        second = catalogue.second_category[videos]
        background = 1.0 - weights.sum(axis=1)
        popularity = catalogue.category_popularity
        affinity = (weights * (user_slots == main[:, None])).sum(axis=1)
        affinity += background * popularity[main]
        affinity_second = (weights * (user_slots == second[:, None])).sum(axis=1)
        affinity += 0.5 * np.where(second >= 0, affinity_second, 0.0)
        logit = (
            -0.3
            + knobs.engagement_affinity * np.log(num_categories * affinity + 0.1)
            + 0.15 * np.clip(log_quality[videos], -4.0, 4.0)
            + device_slope[device[kept_rows]] * log_duration[videos]
            + 0.4 * (how[kept_rows] == 1)
            + rng.normal(0.0, knobs.engagement_noise, size=len(kept_rows))
        )
        fraction = 1.0 / (1.0 + np.exp(-logit))
        duration = catalogue.duration[videos].astype(np.float64)
        watched = np.clip(np.round(duration * fraction), 1.0, duration)

        out_user.append(user_rows[kept_rows].astype(np.int32))
        out_video.append(videos.astype(np.int32 if num_videos < 2**31 else np.int64))
        out_time.append(now[kept_rows].astype(np.int64))
        out_watch.append(watched.astype(np.float32))
        previous[kept_rows] = videos
        clock[kept_rows] = now[kept_rows] + watched
        previous_fraction[kept_rows] = fraction

    events = {
        "user": np.concatenate(out_user) if out_user else np.zeros(0, np.int32),
        "video": np.concatenate(out_video) if out_video else np.zeros(0, np.int32),
        "time": np.concatenate(out_time) if out_time else np.zeros(0, np.int64),
        "watch": np.concatenate(out_watch) if out_watch else np.zeros(0, np.float32),
    }
    if counts["dropped"]:
        logger.info(
            "synthetic: %d draws found no unwatched video and were dropped", counts["dropped"]
        )
    return events, counts
