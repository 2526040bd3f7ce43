"""Video titles for the inspector: read from the bundle on first use, uploads on top."""

import logging

import pandas as pd

from pipelines.serving.metadata import VideoMetadata, write_video_metadata


def _videos(rows):
    return pd.DataFrame(
        {
            "video_id": [r[0] for r in rows],
            "title": [r[1] for r in rows],
            "categories": [list(r[2]) for r in rows],
        }
    )


def test_titles_are_read_on_first_use_and_uploads_win(tmp_path):
    path = tmp_path / "videos.parquet"
    write_video_metadata(_videos([(7, "Old title", ["news"]), (9, "Cats", ["pets"])]), path)
    metadata = VideoMetadata.load(path)
    assert metadata._path == path and metadata._titles == {}  # nothing read at load
    metadata.update(_videos([(7, "New title", ["music"]), (11, "Dogs", [])]))
    assert metadata.describe(7) == {
        "video_id": 7,
        "title": "New title",
        "categories": ["music"],
        "known": True,
    }
    assert metadata.describe(9)["title"] == "Cats"
    assert metadata.describe(12) == {"video_id": 12, "title": "", "categories": [], "known": False}
    assert [v["video_id"] for v in metadata.search("TITLE", 5)] == [7]
    assert [v["video_id"] for v in metadata.search("", 5, hidden=[9])] == [7, 11]


def test_an_unreadable_titles_file_leaves_the_titles_empty(tmp_path, caplog):
    path = tmp_path / "videos.parquet"
    path.write_bytes(b"not parquet")
    metadata = VideoMetadata.load(path)
    with caplog.at_level(logging.ERROR, logger="pipelines.serving.metadata"):
        assert metadata.describe(7)["known"] is False
    assert "cannot read the video titles in" in caplog.text
    assert metadata.search("anything", 3) == []
