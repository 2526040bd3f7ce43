"""The recommendation inspector (/ui) in a real browser: Debian's chromium driven by Playwright,
against a real HTTP server (uvicorn on a free port) over the shared tiny bundle.

Keys are configured and the page is given none: everything it shows comes from the public read
endpoints. Each figure on the page is compared with the JSON the page received and with a
direct call of the same endpoint.
"""

import json
import socket
import threading
import time
import urllib.parse

import httpx
import pytest
import uvicorn
from playwright.sync_api import expect, sync_playwright

from pipelines.serving.app import create_app
from pipelines.serving.auth import KeyRing
from tests.tiny import ADMIN_KEY, KEY_ENV

CHROMIUM = "/usr/bin/chromium"  # Debian's; `make chromium` installs it
K = 6
CELL_W, CELL_H = 26, 20  # the heat map's cell (pipelines/serving/ui/inspector.js)
LIGHT, DARK = (247, 251, 255), (8, 48, 107)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(serving_platform, load_tiny_service):
    """``(base URL, service, data)`` of a real server over the tiny bundle, keys configured."""
    data, config, _, _ = serving_platform
    service = load_tiny_service("inspector")
    app = create_app(service, config.serving, KeyRing(config.serving, environ=KEY_ENV))
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}", service, data
    uv.should_exit = True
    thread.join(10)
    service.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _expected_colour(weight: float, low: float, span: float) -> list[int]:
    t = (weight - low) / span
    return [round(a + (b - a) * t) for a, b in zip(LIGHT, DARK, strict=True)]


def test_user_view_renders_the_api_answer(server, browser, tmp_path):
    url, _, data = server
    user = int(data.interactions["user_id"].value_counts().index[0])
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{url}/ui")
    page.fill("#user-id", str(user))
    page.fill("#k", str(K))
    with page.expect_response(lambda r: r.url.endswith("/recommend")) as answered:
        page.click("#recommend")
    shown = answered.value.json()
    page.wait_for_selector("#attention:not([hidden])")
    expect(page.locator("#recs tbody tr")).to_have_count(K)

    with httpx.Client(base_url=url) as client:
        direct = client.post("/recommend", json={"user_id": user, "k": K, "explain": True}).json()
        history = client.get(f"/users/{user}/history", params={"limit": 50}).json()
        ids = {item["video_id"] for item in shown["items"]} | set(shown["attention"]["history"])
        ids |= {w["video_id"] for w in history["watches"]}
        ids |= {item["because"][0] for item in shown["items"] if item["because"]}
        described = client.get("/videos", params={"id": sorted(ids)}).json()["videos"]
    titles = {v["video_id"]: v["title"] for v in described}
    assert all(titles.values()), "every video of the tiny platform has a title"

    # The list: the page shows what it was sent, and that is what a direct call answers.
    assert shown["source"] == direct["source"] == "personalized"
    assert [i["video_id"] for i in shown["items"]] == [i["video_id"] for i in direct["items"]]
    assert shown["attention"]["history"] == direct["attention"]["history"]
    rows = page.locator("#recs tbody tr")
    for position, item in enumerate(shown["items"]):
        cells = rows.nth(position).locator("td").all_text_contents()
        assert cells[:7] == [
            str(position + 1),
            str(item["video_id"]),
            titles[item["video_id"]],
            cells[3],  # categories, checked below for one row
            f"{item['score']:.4f}",
            item["source"],
            titles[item["because"][0]] if item["because"] else "",
        ]
        assert abs(float(cells[4]) - direct["items"][position]["score"]) < 1e-3
    first = described[[v["video_id"] for v in described].index(shown["items"][0]["video_id"])]
    assert rows.nth(0).locator("td").nth(3).text_content() == ", ".join(first["categories"])
    assert page.text_content("#rec-source") == "personalized"
    timing_stages = page.locator("#timings th").all_text_contents()
    assert timing_stages == list(shown["timings_ms"])

    # The history, newest first, with its engagement.
    watches = history["watches"][::-1]
    history_rows = page.locator("#history tbody tr")
    assert history_rows.count() == len(watches) == min(50, history["total"])
    newest = history_rows.nth(0).locator("td").all_text_contents()
    engagement = watches[0]["engagement"]
    assert newest[:4] == [
        str(watches[0]["video_id"]),
        titles[watches[0]["video_id"]],
        newest[2],
        "?" if engagement is None else f"{engagement:.2f}",
    ]

    # The heat map: one cell per (recommendation, watched video), coloured by its weight.
    weights = shown["attention"]["weights"]
    canvas = page.locator("#heatmap")
    cols = len(shown["attention"]["history"])
    assert canvas.get_attribute("data-rows") == str(K)
    assert canvas.get_attribute("data-cols") == str(cols)
    assert canvas.evaluate("c => [c.width, c.height]") == [cols * CELL_W, K * CELL_H]
    flat = [w for row in weights for w in row]
    low, span = min(flat), max(max(flat) - min(flat), 1e-9)
    for r, c in [(0, 0), (1, cols - 1), (K - 1, cols // 2)]:
        pixel = canvas.evaluate(
            "(c, [x, y]) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data)",
            [c * CELL_W + CELL_W // 2, r * CELL_H + CELL_H // 2],
        )
        expected = _expected_colour(weights[r][c], low, span)
        assert all(abs(a - b) <= 1 for a, b in zip(pixel[:3], expected, strict=True)), (
            r,
            c,
            pixel,
            expected,
        )
    legend = page.locator("#heat-cols li").all_text_contents()
    assert legend == [titles[v] for v in shown["attention"]["history"]]
    r, c = 1, cols - 2
    canvas.hover(position={"x": c * CELL_W + CELL_W / 2, "y": r * CELL_H + CELL_H / 2})
    tip = page.locator("#heat-tip")
    tip.wait_for(state="visible")
    watched = shown["attention"]["history"][c]
    assert tip.text_content() == (
        f"#{r + 1} {titles[shown['items'][r]['video_id']]} ← {titles[watched]}: "
        f"weight {weights[r][c]:.4f}"
    )
    screenshot = tmp_path / "inspector-user.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"\ninspector screenshot: {screenshot}")

    # Similar videos of a recommendation, and a title search.
    target = shown["items"][0]["video_id"]
    with page.expect_response(lambda r: "/similar?" in r.url) as similar:
        page.locator(f"#recs tbody tr[data-video-id='{target}'] button.similar").click()
    similar_ids = [i["video_id"] for i in similar.value.json()["items"]]
    expect(page.locator("#side-list tbody tr")).to_have_count(len(similar_ids))
    side_ids = page.locator("#side-list tbody tr").evaluate_all(
        "rows => rows.map(r => Number(r.dataset.videoId))"
    )
    assert side_ids == similar_ids and target not in side_ids
    words = titles[target].split()[:2]
    with page.expect_response(lambda r: "/videos/search?" in r.url) as searched:
        page.fill("#search-q", " ".join(words).upper())
        page.click("#search")
    found = searched.value.json()["videos"]
    assert target in {v["video_id"] for v in found}
    expect(page.locator("#side-list tbody tr")).to_have_count(len(found))
    for text in page.locator("#side-list tbody td.title").all_text_contents():
        assert all(word.casefold() in text.casefold() for word in words)
    assert problems == []
    page.close()


def test_bundle_page_shows_the_serving_bundle(server, browser, tmp_path):
    url, service, _ = server
    # A report as `vidrec evaluate` keeps it beside the store (figures made up, to be found).
    evaluation = {
        "dataset": {"name": "synthetic"},
        "protocol": "leave-one-out per user",
        "num_cases": 275,
        "columns": ["ndcg@10", "recall@60"],
        "rows": {"two_stage": {"ndcg@10": 0.1234, "recall@60": 0.5}, "ease": {"ndcg@10": 0.1}},
        "seconds": {},
        "bundle_id": service.current.bundle_id,
    }
    report = service.store.evaluation_path(service.current.bundle_id)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(evaluation))
    with httpx.Client(base_url=url) as client:
        bundle = client.get("/bundle").json()
    assert bundle["evaluation"] == evaluation
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.goto(f"{url}/ui#bundle")
    page.wait_for_selector("#bundle-training table")
    assert page.text_content("#bundle-id") == service.current.bundle_id == bundle["bundle_id"]
    rows = page.locator("#bundle-evaluation tbody tr")
    assert [rows.nth(i).locator("td").all_text_contents() for i in range(rows.count())] == [
        ["two_stage", "0.1234", "0.5000"],
        ["ease", "0.1000", ""],
    ]
    assert page.text_content("#bundle-evaluation-note") == "275 users; leave-one-out per user"
    gate = bundle["metrics"]["stage_gate"]
    served = page.locator(f"#bundle-gate tbody tr[data-order='{gate['order']}'] td")
    assert served.all_text_contents() == [
        f"{gate['order']} (served)",
        f"{gate['validation_ndcg@10'][gate['order']]:.4f}",
    ]
    facts = dict(
        page.locator("#bundle-facts tbody tr").evaluate_all(
            "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])"
        )
    )
    since = bundle["serving_since"]
    assert since["bundle_id"] == bundle["bundle_id"]
    assert facts["serving since"] == f"{since['time']} ({since['action']})"
    assert facts["counts.videos"] == str(bundle["counts"]["videos"])
    for stage, history in bundle["training"].items():
        table = page.locator(f"table.training[data-stage='{stage}'] tbody tr")
        assert table.count() == len(history["epochs"])
        assert table.nth(0).locator("td").nth(1).text_content() == (
            f"{history['epochs'][0]['loss']:.4f}"
        )
    curves = sorted(n for n in bundle["reports"] if n.endswith(".png"))
    assert curves == ["ranking_training.png", "retrieval_training.png"]
    images = page.locator("#bundle-curves img")
    expect(images).to_have_count(len(curves))
    for i in range(len(curves)):
        # A function, not a string: the page's policy forbids evaluating strings.
        page.wait_for_function(
            "image => image.complete && image.naturalWidth > 0", arg=images.nth(i).element_handle()
        )
    screenshot = tmp_path / "inspector-bundle.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"\nbundle page screenshot: {screenshot}")
    assert problems == []
    page.close()
    # A report that is not one (a hand-edited file) leaves the page without it, not broken.
    report.write_text('["not", "a report"]')
    with httpx.Client(base_url=url) as client:
        response = client.get("/bundle")
    assert response.status_code == 200
    assert response.json()["evaluation"] is None
    report.unlink()


def test_page_and_reports_are_locked_to_this_server(server):
    url, _, _ = server
    with httpx.Client(base_url=url) as client:
        page = client.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere
        assert client.get("/ui/inspector.js").headers["content-type"].startswith("text/javascript")
        missing = client.get("/ui/nothing.js")
        assert missing.status_code == 404
        assert missing.json() == {"error": "no file 'nothing.js' in the inspector; open /ui"}
        # (httpx would resolve a bare ".." itself, before the server sees it.)
        for name in ["...", ".hidden", "a%2F..%2Fmanifest.json", "%2E%2E%2Fmanifest.json"]:
            answer = client.get(f"/bundle/reports/{urllib.parse.quote(name, safe='%')}")
            assert answer.status_code in (404, 422), (name, answer.status_code)
        traversal = client.get("/bundle/reports/..%2Fmanifest.json")
        assert traversal.status_code in (404, 422)
        assert client.get("/bundle/reports/index_build.json").json()["kind"] == "flat"
        absent = client.get("/bundle/reports/manifest.json")
        assert absent.status_code == 404
        assert absent.json()["error"] == (
            "no report 'manifest.json' in the serving bundle; GET /bundle lists them"
        )


def test_search_and_titles_follow_uploads_and_takedowns(server):
    url, _, _ = server
    admin = {"X-API-Key": ADMIN_KEY}
    new_id = 987_654
    with httpx.Client(base_url=url) as client:
        assert client.get("/videos/search", params={"q": "zyzzyva"}).json()["videos"] == []
        upload = {"video_id": new_id, "title": "The Zyzzyva weevil", "categories": ["nature"]}
        assert client.post("/videos", json=upload, headers=admin).status_code == 200
        expected = {
            "video_id": new_id,
            "title": "The Zyzzyva weevil",
            "categories": ["nature"],
            "known": True,
            "servable": True,
        }
        found = client.get("/videos/search", params={"q": "WEEVIL zyzzyva"}).json()["videos"]
        assert found == [expected]
        assert client.get("/videos", params={"id": new_id}).json()["videos"] == [expected]
        assert client.delete(f"/videos/{new_id}", headers=admin).status_code == 200
        assert client.get("/videos/search", params={"q": "zyzzyva"}).json()["videos"] == []
        gone = client.get("/videos", params={"id": new_id}).json()["videos"][0]
        assert (gone["known"], gone["servable"]) == (True, False)
        blank = client.get("/videos/search", params={"q": "   "})
        assert blank.status_code == 422
        assert blank.json() == {"error": "q is blank: send at least one word of a title"}
        too_many = client.get("/videos", params={"id": list(range(501))})
        assert too_many.status_code == 422
        assert "id" in too_many.json()["error"]
