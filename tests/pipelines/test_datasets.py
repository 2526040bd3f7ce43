"""Loaders on real MovieLens files, on tiny fixtures in the original formats, on bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import DataError
from pipelines.data.datasets import (
    detect_format,
    load_dataset,
    load_interactions_file,
    load_movielens_1m,
    load_movielens_100k,
    load_movielens_latest,
    read_dataset,
    write_dataset,
)

ML100K_GENRES = (
    "unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\nComedy|5\nCrime|6\n"
    "Documentary|7\nDrama|8\nFantasy|9\nFilm-Noir|10\nHorror|11\nMusical|12\nMystery|13\n"
    "Romance|14\nSci-Fi|15\nThriller|16\nWar|17\nWestern|18\n\n"
)


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def _ratings_lines(count: int, sep: str = "\t") -> list[str]:
    """``count`` distinct valid rating lines over users 1-3 and movies 1-3."""
    return [
        sep.join([str(1 + i % 3), str(1 + (i // 3) % 3), str(1 + i % 5), str(880000000 + i)])
        for i in range(count)
    ]


def _ml100k(root: Path, ratings: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "u.data", "\n".join(ratings or _ratings_lines(20)) + "\n", "latin-1")
    _write(root / "u.genre", ML100K_GENRES, "latin-1")
    items = [
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{_flags(3, 4, 5)}",
        f"2|Café au lait (Métisse) (1993)|01-Jan-1993||http://x|{_flags(5)}",
        f"3|unknown||||{_flags(0)}",
    ]
    _write(root / "u.item", "\n".join(items) + "\n", "latin-1")
    _write(root / "u.user", "1|24|M|technician|85711\n2|53|F|other|04043\n3|23|M|writer|32067\n")
    return root


def _ml1m(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    ratings = "\n".join(_ratings_lines(12, "::")) + "\n"
    _write(root / "ratings.dat", ratings, "latin-1")
    movies = (
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Café Society (1995)::Drama\n"
        "3::Heat (1995)::Action|Crime|Thriller\n"
    )
    _write(root / "movies.dat", movies, "latin-1")
    _write(root / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    return root


def _ml_latest(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _write(
        root / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n"
        "2,1,5.0,964982224\n2,3,0.5,964983815\n",
    )
    _write(
        root / "movies.csv",
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
        '2,"American President, The (1995)",Comedy|Drama|Romance\n'
        "3,Babylon 5,(no genres listed)\n",
    )
    _write(
        root / "tags.csv",
        "userId,movieId,tag,timestamp\n2,1,Pixar,1445714994\n3,1,pixar,1445714995\n"
        '4,1,"fun, clever",1445714996\n4,2, Politics ,1445714997\n',
    )
    return root


# --------------------------------------------------------------------------------------------
# Real data
# --------------------------------------------------------------------------------------------


def test_ml100k_real_counts_titles_and_dtypes(shared_data_dir: Path) -> None:
    path = shared_data_dir / "ml-100k"
    if not (path / "u.data").is_file():
        pytest.skip(f"{path} has no u.data")
    dataset = load_dataset(path)
    assert dataset.name == "ml-100k"
    assert len(dataset.interactions) == 100_000
    assert dataset.num_users == 943
    assert dataset.num_videos == 1682
    for column in ("user_id", "video_id", "timestamp"):
        assert dataset.interactions[column].dtype == np.int64
    assert dataset.videos["video_id"].dtype == np.int64
    assert dataset.interactions["rating"].between(1, 5).all()
    assert (dataset.interactions["event"] == "rating").all()
    videos = dataset.videos.set_index("video_id")
    assert videos.loc[1, "title"] == "Toy Story"
    assert videos.loc[1, "year"] == 1995
    assert videos.loc[1, "categories"] == ("Animation", "Children's", "Comedy")
    assert videos.loc[2, "categories"] == ("Action", "Adventure", "Thriller")
    # Movie 267 has no title year, no release date and only the "unknown" genre flag.
    assert videos.loc[267, "title"] == "unknown"
    assert math.isnan(videos.loc[267, "year"])
    assert videos.loc[267, "categories"] == ()
    assert not any(title.endswith(")") and title[-5:-1].isdigit() for title in videos["title"])
    users = dataset.users.set_index("user_id")
    assert len(users) == 943
    assert users.loc[1, "age"] == "24" and users.loc[1, "occupation"] == "technician"


def test_ml_latest_small_real_counts_genres_and_tags(shared_data_dir: Path) -> None:
    path = shared_data_dir / "ml-latest-small"
    if not (path / "ratings.csv").is_file():
        pytest.skip(f"{path} has no ratings.csv")
    assert detect_format(path) == "ml-latest"
    dataset = load_dataset(path)
    assert dataset.name == "ml-latest-small"
    assert len(dataset.interactions) == 100_836
    assert dataset.num_users == 610
    assert dataset.num_videos == 9742
    assert dataset.users is None
    assert dataset.interactions["user_id"].dtype == np.int64
    videos = dataset.videos.set_index("video_id")
    toy = videos.loc[1]
    assert (toy["title"], toy["year"]) == ("Toy Story", 1995)
    assert toy["categories"] == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert "pixar" in toy["tags"]
    for tags in videos["tags"]:
        assert len(set(tags)) == len(tags)
        assert all(tag == tag.lower() and tag == tag.strip() and tag for tag in tags)
    no_genres = videos[videos["categories"].map(len) == 0]
    assert len(no_genres) == 34  # the "(no genres listed)" movies
    # Titles with a trailing space after the year still lose the year.
    assert videos.loc[videos["title"] == "Runaway Brain", "year"].iloc[0] == 1995


# --------------------------------------------------------------------------------------------
# Tiny fixtures in the original formats
# --------------------------------------------------------------------------------------------


def test_ml100k_fixture_latin1_titles_and_users(tmp_path: Path) -> None:
    dataset = load_movielens_100k(_ml100k(tmp_path / "ml-100k"))
    videos = dataset.videos.set_index("video_id")
    assert videos.loc[2, "title"] == "Café au lait (Métisse)"
    assert videos.loc[2, "year"] == 1993
    assert videos.loc[1, "categories"] == ("Animation", "Children's", "Comedy")
    assert videos.loc[3, "categories"] == ()
    assert dataset.users.set_index("user_id").loc[2, "zip"] == "04043"  # leading zero kept
    assert len(dataset.interactions) == 20


def test_ml1m_fixture(tmp_path: Path) -> None:
    root = _ml1m(tmp_path / "ml-1m")
    assert detect_format(root) == "ml-1m"
    dataset = load_dataset(root)
    assert dataset.name == "ml-1m"
    assert len(dataset.interactions) == 12
    assert dataset.interactions["video_id"].dtype == np.int64
    assert dataset.interactions["rating"].dtype == np.float32
    videos = dataset.videos.set_index("video_id")
    assert videos.loc[2, "title"] == "Café Society"
    assert videos.loc[2, "year"] == 1995
    assert videos.loc[3, "categories"] == ("Action", "Crime", "Thriller")
    users = dataset.users.set_index("user_id")
    assert list(users.columns) == ["gender", "age", "occupation", "zip"]
    assert users.loc[2, "age"] == "56"


def test_ml_latest_fixture_tags_quotes_and_no_genres(tmp_path: Path) -> None:
    dataset = load_movielens_latest(_ml_latest(tmp_path / "latest"))
    videos = dataset.videos.set_index("video_id")
    assert videos.loc[1, "tags"] == ("pixar", "fun, clever")
    assert videos.loc[2, "tags"] == ("politics",)
    assert videos.loc[2, "title"] == "American President, The"
    assert videos.loc[3, "categories"] == ()
    assert videos.loc[3, "title"] == "Babylon 5" and math.isnan(videos.loc[3, "year"])
    assert dataset.interactions["rating"].tolist() == [3.5, 4.0, 5.0, 0.5]  # by user, time


def test_generic_csv_with_mapping_videos_and_users(tmp_path: Path) -> None:
    events = _write(
        tmp_path / "events.csv",
        "uid,item,ts,secs,kind\n10,100,1700000000,30.5,watch\n10,200,1700000100,,watch\n"
        "11,100,1700000050,12,like\n",
    )
    videos = _write(
        tmp_path / "videos.csv",
        'item,title,categories,duration\n100,"Soup, hot",cooking|food,61\n200,Song,music,200\n'
        "300,Unwatched,,\n",
    )
    users = _write(tmp_path / "users.csv", "uid,country\n10,FR\n11,JP\n")
    mapping = {
        "uid": "user_id",
        "item": "video_id",
        "ts": "timestamp",
        "secs": "watch_seconds",
        "kind": "event",
    }
    dataset = load_interactions_file(events, mapping, videos_path=videos, users_path=users)
    assert dataset.name == "events"
    assert dataset.interactions["user_id"].tolist() == [10, 10, 11]
    assert dataset.interactions["event"].tolist() == ["watch", "watch", "like"]
    assert np.isnan(dataset.interactions["watch_seconds"].iloc[1])
    catalogue = dataset.videos.set_index("video_id")
    assert catalogue.loc[100, "categories"] == ("cooking", "food")
    assert catalogue.loc[100, "title"] == "Soup, hot"
    assert catalogue.loc[300, "categories"] == ()
    assert dataset.users.set_index("user_id").loc[11, "country"] == "JP"


def test_generic_csv_without_videos_builds_empty_catalogue_and_parses_iso_times(
    tmp_path: Path,
) -> None:
    path = _write(
        tmp_path / "log.csv",
        "user_id,video_id,timestamp\n1,7,2024-01-01T00:00:00Z\n2,9,2024-01-01T00:01:00Z\n",
    )
    dataset = load_dataset(path)
    assert dataset.interactions["timestamp"].tolist() == [1704067200, 1704067260]
    assert dataset.videos["video_id"].tolist() == [7, 9]
    assert dataset.videos["title"].tolist() == ["", ""]


def test_generic_parquet(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame(
        {"user": [1, 1, 2], "video_id": [5, 6, 5], "timestamp": [3, 4, 5], "rating": [1.0, 2, 3]}
    ).to_parquet(path)
    dataset = load_dataset(path, column_mapping={"user": "user_id"})
    assert dataset.interactions["user_id"].dtype == np.int64
    assert dataset.interactions["rating"].tolist() == [1.0, 2.0, 3.0]


def test_parquet_layout_round_trip(tmp_path: Path) -> None:
    original = load_movielens_100k(_ml100k(tmp_path / "ml-100k"))
    out = tmp_path / "stored"
    write_dataset(original, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "interactions.parquet",
        "users.parquet",
        "videos.parquet",
    ]
    assert detect_format(out) == "parquet-layout"
    loaded = load_dataset(out)
    assert loaded.name == "ml-100k"
    pd.testing.assert_frame_equal(loaded.interactions, original.interactions)
    pd.testing.assert_frame_equal(loaded.videos, original.videos)
    pd.testing.assert_frame_equal(loaded.users, original.users)


def test_parquet_layout_refuses_files_of_two_writes(tmp_path: Path) -> None:
    first = load_movielens_100k(_ml100k(tmp_path / "a"))
    second = load_movielens_latest(_ml_latest(tmp_path / "b"))
    write_dataset(first, tmp_path / "one")
    write_dataset(second, tmp_path / "two")
    (tmp_path / "two" / "videos.parquet").replace(tmp_path / "one" / "videos.parquet")
    with pytest.raises(DataError, match="mixes two writes"):
        read_dataset(tmp_path / "one")


def test_drop_duplicates_keeps_first(tmp_path: Path) -> None:
    lines = _ratings_lines(6)
    root = _ml100k(tmp_path / "d", [*lines, lines[2]])
    with pytest.raises(DataError):
        load_movielens_100k(root)
    dataset = load_movielens_100k(root, drop_duplicates=True)
    assert len(dataset.interactions) == 6


# --------------------------------------------------------------------------------------------
# Bad input: one clear DataError naming the file and the line (or column)
# --------------------------------------------------------------------------------------------


def test_missing_ratings_file(tmp_path: Path) -> None:
    root = _ml100k(tmp_path / "m")
    (root / "u.data").unlink()
    with pytest.raises(DataError, match=r"u\.data: file not found"):
        load_movielens_100k(root)


def test_missing_movies_file(tmp_path: Path) -> None:
    root = _ml1m(tmp_path / "m")
    (root / "movies.dat").unlink()
    with pytest.raises(DataError, match=r"movies\.dat: file not found"):
        load_movielens_1m(root)


def test_non_integer_user_id_names_file_and_line(tmp_path: Path) -> None:
    lines = _ratings_lines(20)
    lines[16] = "abc\t1\t3\t881250949"
    root = _ml100k(tmp_path / "bad", lines)
    with pytest.raises(DataError, match=r"u\.data, line 17, column 'user_id': 'abc' is not an"):
        load_movielens_100k(root)


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    lines = _ratings_lines(10)
    lines[5] = "3\t2.5\t3\t881250949"
    root = _ml100k(tmp_path / "bad", [lines[0], "", *lines[1:]])
    with pytest.raises(DataError, match=r"u\.data, line 7, column 'video_id': '2\.5'"):
        load_movielens_100k(root)


def test_too_few_fields(tmp_path: Path) -> None:
    lines = _ratings_lines(10)
    lines[4] = "3\t2\t3"
    with pytest.raises(DataError, match=r"u\.data, line 5: expected 4 fields .* found 3"):
        load_movielens_100k(_ml100k(tmp_path / "bad", lines))


def test_too_many_fields(tmp_path: Path) -> None:
    lines = _ratings_lines(10)
    lines[7] += "\t99"
    with pytest.raises(DataError, match=r"u\.data, line 8: expected 4 fields .* found 5"):
        load_movielens_100k(_ml100k(tmp_path / "bad", lines))


def test_too_many_fields_on_every_line(tmp_path: Path) -> None:
    lines = [line + "\t1" for line in _ratings_lines(4)]
    with pytest.raises(DataError, match=r"u\.data, line 1: expected 4 fields .* found 5"):
        load_movielens_100k(_ml100k(tmp_path / "bad", lines))


def test_ml1m_bad_line(tmp_path: Path) -> None:
    root = _ml1m(tmp_path / "m")
    text = (root / "ratings.dat").read_text()
    lines = text.splitlines()
    lines[2] = "1::2::x::978300760"
    _write(root / "ratings.dat", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ratings\.dat, line 3, column 'rating': 'x' is not a num"):
        load_movielens_1m(root)


def test_duplicate_events_name_both_lines(tmp_path: Path) -> None:
    lines = _ratings_lines(10)
    root = _ml100k(tmp_path / "dup", [*lines[:8], lines[2], *lines[8:]])
    with pytest.raises(
        DataError, match=r"u\.data, line 9: duplicate event: repeats the event of line 3"
    ) as caught:
        load_movielens_100k(root)
    assert "drop_duplicates" in str(caught.value)


def test_duplicate_movie_id(tmp_path: Path) -> None:
    root = _ml1m(tmp_path / "m")
    with open(root / "movies.dat", "a", encoding="latin-1") as handle:
        handle.write("2::Again (2000)::Drama\n")
    with pytest.raises(DataError, match=r"movies\.dat, line 4, column 'video_id': video_id 2 is"):
        load_movielens_1m(root)


def test_negative_timestamp(tmp_path: Path) -> None:
    lines = _ratings_lines(5)
    lines[3] = "1\t1\t3\t-5"
    with pytest.raises(DataError, match=r"u\.data, line 4, column 'timestamp': negative"):
        load_movielens_100k(_ml100k(tmp_path / "neg", lines))


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_ratings_file(tmp_path: Path, content: str) -> None:
    root = _ml100k(tmp_path / "e")
    _write(root / "u.data", content)
    with pytest.raises(DataError, match=r"u\.data: the file is empty"):
        load_movielens_100k(root)


def test_header_only_csv_has_no_interactions(tmp_path: Path) -> None:
    path = _write(tmp_path / "events.csv", "user_id,video_id,timestamp\n")
    with pytest.raises(DataError, match=r"events\.csv: no interactions"):
        load_interactions_file(path)


def test_undecodable_bytes_name_file_line_and_encoding_option(tmp_path: Path) -> None:
    root = _ml_latest(tmp_path / "latest")
    movies = "movieId,title,genres\n1,Toy Story (1995),Comedy\n2,Café (1995),Drama\n3,X,Y\n"
    _write(root / "movies.csv", movies, "latin-1")
    with pytest.raises(DataError, match=r"movies\.csv, line 3: cannot decode .*utf-8.*--encoding"):
        load_movielens_latest(root)
    dataset = load_movielens_latest(root, encoding="latin-1")
    assert dataset.videos.set_index("video_id").loc[2, "title"] == "Café"


def test_undecodable_bytes_deep_in_a_large_file(tmp_path: Path) -> None:
    rows = [f"{i % 50},{i},{1700000000 + i}" for i in range(1, 30_001)]
    rows[25_000] = "1,Ã©\xff,5"
    path = tmp_path / "big.csv"
    path.write_bytes(("user_id,video_id,timestamp\n" + "\n".join(rows)).encode("latin-1"))
    with pytest.raises(DataError, match=r"big\.csv, line 25002: cannot decode"):
        load_interactions_file(path)


def test_unknown_encoding_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown encoding 'klingon'"):
        load_movielens_latest(_ml_latest(tmp_path / "latest"), encoding="klingon")


def test_missing_columns_suggest_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "events.csv", "user,item,ts\n1,2,3\n")
    with pytest.raises(DataError, match=r"events\.csv, line 1: missing column.*column_mapping"):
        load_interactions_file(path)


def test_mapping_names_absent_column(tmp_path: Path) -> None:
    path = _write(tmp_path / "events.csv", "user,item,ts\n1,2,3\n")
    expected = r"events\.csv, line 1: column_mapping names column\(s\) \['it'\]"
    with pytest.raises(DataError, match=expected):
        load_interactions_file(path, {"user": "user_id", "it": "video_id", "ts": "timestamp"})


def test_ml_latest_missing_header_column(tmp_path: Path) -> None:
    root = _ml_latest(tmp_path / "latest")
    _write(root / "ratings.csv", "userId,itemId,rating,timestamp\n1,1,4.0,964982703\n")
    with pytest.raises(DataError, match=r"ratings\.csv, line 1: missing column\(s\) \['movieId'\]"):
        load_movielens_latest(root)


def test_generic_csv_line_numbers_follow_quoted_newlines(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "events.csv",
        'user_id,video_id,timestamp,note\n1,2,3,"two\nlines"\n1,3,4,ok\n1,x,5,bad\n',
    )
    with pytest.raises(DataError, match=r"events\.csv, line 5, column 'video_id': 'x'"):
        load_interactions_file(path)


def test_generic_csv_bad_id_after_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "events.csv", "u,v,t\n1,2,3\n1,2,4\n1.5,2,5\n")
    with pytest.raises(DataError, match=r"events\.csv, line 4, column 'u': '1\.5' is not an int"):
        load_interactions_file(path, {"u": "user_id", "v": "video_id", "t": "timestamp"})


def test_generic_csv_bad_timestamp(tmp_path: Path) -> None:
    path = _write(tmp_path / "events.csv", "user_id,video_id,timestamp\n1,2,3\n1,3,yesterday\n")
    with pytest.raises(DataError, match=r"events\.csv, line 3, column 'timestamp': 'yesterday'"):
        load_interactions_file(path)


def test_parquet_bad_ids_name_the_row(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame(
        {"user_id": ["1", "2", "u3"], "video_id": [1, 2, 3], "timestamp": [1, 2, 3]}
    ).to_parquet(path)
    with pytest.raises(DataError, match=r"events\.parquet, column 'user_id': 'u3' .*\(row 3\)"):
        load_interactions_file(path)


def test_not_a_parquet_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "events.parquet", "user_id,video_id\n")
    with pytest.raises(DataError, match=r"events\.parquet: cannot read as Parquet"):
        load_interactions_file(path)


def test_interactions_naming_unknown_videos(tmp_path: Path) -> None:
    events = _write(tmp_path / "events.csv", "user_id,video_id,timestamp\n1,2,3\n1,9,4\n")
    videos = _write(tmp_path / "videos.csv", "video_id,title\n2,Two\n")
    with pytest.raises(DataError, match=r"events\.csv.*missing from .*videos\.csv.*video_id 9"):
        load_interactions_file(events, videos_path=videos)


def test_ratings_of_movies_missing_from_catalogue(tmp_path: Path) -> None:
    root = _ml1m(tmp_path / "m")
    with open(root / "ratings.dat", "a", encoding="latin-1") as handle:
        handle.write("1::42::3::978300760\n")
    with pytest.raises(DataError, match=r"m: .*missing from the catalogue, e\.g\. video_id 42"):
        load_movielens_1m(root)


def test_load_dataset_unknown_layout_lists_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"cannot tell the data format; looked for .*u\.data"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match=r"path not found"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"notes\.txt: unsupported file type"):
        load_dataset(tmp_path / "notes.txt")


def test_load_dataset_refuses_options_of_another_format(tmp_path: Path) -> None:
    root = _ml100k(tmp_path / "ml")
    with pytest.raises(DataError, match=r"option\(s\) \['column_mapping'\] do not apply"):
        load_dataset(root, column_mapping={"a": "user_id"})
    assert len(load_dataset(root, encoding="latin-1", column_mapping=None).interactions) == 20


def test_mapping_key_in_no_file(tmp_path: Path) -> None:
    events = _write(tmp_path / "events.csv", "user_id,video_id,timestamp\n1,2,3\n")
    expected = r"events\.csv: column_mapping names column\(s\) \['nope'\] that none"
    with pytest.raises(DataError, match=expected):
        load_interactions_file(events, {"nope": "title"})
