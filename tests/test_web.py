"""The web page at ``/``: its security headers, and the whole flow in a real Chromium.

The browser tests run against a live server with the fake engine, so they take
seconds; they skip (saying why) where Debian's chromium or playwright is absent.
The flow test also refreshes the screenshots in ``docs/screenshots``.
"""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from app.api.page import STATIC_DIR
from tests import browser
from tests.conftest import REPO, LiveServer, wait_done
from tests.media import make_video_with_speech

SCREENSHOTS = REPO / "docs" / "screenshots"
TIMEOUT_MS = 20_000

needs_browser = pytest.mark.skipif(browser.missing_reason() is not None, reason=str(browser.missing_reason()))


# ---- without a browser -------------------------------------------------------------


def test_page_and_static_files_carry_security_headers(make_server: Callable[..., LiveServer]) -> None:
    live = make_server()
    with live.client() as client:
        for path in ("/", "/static/app.js", "/static/app.css"):
            r = client.get(path)
            assert r.status_code == 200, path
            csp = r.headers["content-security-policy"]
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
            assert directives["default-src"] == "'none'"
            assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
            assert directives["frame-ancestors"] == "'none'"
            assert "unsafe" not in csp
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["referrer-policy"] == "no-referrer"
        assert client.get("/").headers["content-type"].startswith("text/html")
        assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
        r = client.get("/static/nothing-here.js")
        assert r.status_code == 404 and r.json()["error"]["code"]
        assert client.get("/static/../api.py").status_code == 404


def test_page_has_a_label_for_every_stage() -> None:
    """The page names stages from its own table; a stage missing there would show raw."""
    from storage.states import Stage

    script = (STATIC_DIR / "app.js").read_text(encoding="utf-8")
    table = re.search(r"const STAGES = \{(.*?)\};", script, re.S)
    assert table is not None
    labelled = set(re.findall(r"^\s*(\w+):", table.group(1), re.M))
    assert labelled == {s.value for s in Stage}


def test_page_has_no_inline_script_or_style_and_nothing_remote() -> None:
    html = (STATIC_DIR / "index.html").read_text("utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script> would be blocked by the CSP"
    assert not re.search(r"\s(style|on[a-z]+)=", html), "inline style/handler attributes would be blocked by the CSP"
    assert "<style" not in html
    for name in ("index.html", "app.js", "app.css"):
        text = (STATIC_DIR / name).read_text("utf-8")
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), f"{name} loads something from another site"


# ---- in Chromium -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chrome() -> Iterator[Any]:
    with browser.chromium() as b:
        yield b


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video_with_speech("hello from the browser test", tmp_path_factory.mktemp("web") / "talk.mp4")


@pytest.fixture
def page(chrome: Any) -> Iterator[Any]:
    context = chrome.new_context(viewport=browser.DESKTOP, device_scale_factor=1, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems = browser.PageProblems(page)
    yield page
    context.close()
    assert problems.messages == [], problems.messages


def read_download(page: Any, click: Callable[[], None]) -> tuple[str, bytes]:
    with page.expect_download() as info:
        click()
    download = info.value
    return download.suggested_filename, Path(download.path()).read_bytes()


@needs_browser
def test_upload_watch_edit_export_download(make_server: Callable[..., LiveServer], page: Any, clip: Path) -> None:
    from playwright.sync_api import expect

    live = make_server()
    page.goto(live.url + "/")
    expect(page.get_by_role("heading", name="altyazi")).to_be_visible()

    # Upload: the options travel with it and the job opens at once.
    page.set_input_files("#file", str(clip))
    expect(page.locator("#file-name")).to_contain_text("talk.mp4")
    page.get_by_label("Language").select_option("en")
    page.get_by_role("button", name="Upload and transcribe").click()
    expect(page.locator("#job-title")).to_have_text("talk.mp4")

    # The transcript arrives over the event stream; done shows the results and the editor.
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=60_000)
    segments = page.locator("#segments > li")
    expect(segments.first.locator("textarea")).to_have_value("window 0")
    expect(segments.first.locator(".seg-start")).to_have_value(re.compile(r"^00:00\."))
    job_id = live.client().get("/v1/jobs").json()["jobs"][0]["id"]
    assert page.evaluate("location.hash") == f"#job={job_id}"
    expect(page.locator(f'#jobs li[data-job="{job_id}"]')).to_contain_text("done")
    # The local file plays with the subtitles as a track, both from blob: URLs.
    assert page.evaluate("document.getElementById('player').src").startswith("blob:")
    page.wait_for_function("() => { const t = document.querySelector('#player track'); return t && t.src.startsWith('blob:'); }")

    # A time the server refuses: its message is shown beside that segment, as written.
    page.get_by_label("End of segment 1").fill("0")
    page.get_by_label("End of segment 1").press("Tab")
    error = segments.first.locator(".seg-error")
    expect(error).to_be_visible()
    with live.client() as client:
        start = client.get(f"/v1/jobs/{job_id}/transcript").json()["segments"][0]["start"]
        expected = client.put(f"/v1/jobs/{job_id}/transcript", json={"segments": [{"start": start, "end": 0, "text": "x"}]}).json()["error"]["message"]
    assert expected.startswith("segment 1: ")  # as the page numbers the row
    expect(error).to_have_text(expected)

    # Good edits are saved as they are made (one PATCH each) and the export picks them up.
    page.get_by_label("End of segment 1").fill("00:01.500")
    page.get_by_label("End of segment 1").press("Tab")
    page.get_by_label("Text of segment 1").fill("Edited in the browser")
    expect(page.locator("#save-status")).to_contain_text("All changes saved")
    expect(error).to_be_hidden()

    page.get_by_label("Container").select_option("mkv")
    page.get_by_role("button", name="Add subtitle track").click()
    link = page.get_by_role("link", name=re.compile(r"^Download MKV"))
    expect(link).to_be_visible(timeout=60_000)
    name, data = read_download(page, link.click)
    assert name == "talk_subs.mkv" and len(data) > 1000

    name, data = read_download(page, page.get_by_role("button", name="SRT", exact=True).click)
    assert name == "talk.srt"
    assert "Edited in the browser" in data.decode("utf-8")
    assert "00:00:01,500" in data.decode("utf-8")

    # Every form control has a name a screen reader can say.
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter(e => !e.closest('[hidden]'))
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map(e => e.outerHTML)"""
    )
    assert unlabelled == []

    # The row's number plays it (and the caption shows there).
    page.get_by_role("button", name="Play segment 1").click()
    page.wait_for_function("() => document.getElementById('player').currentTime >= 0.17")
    page.evaluate("() => { const p = document.getElementById('player'); p.pause(); p.currentTime = 0.9; }")
    page.wait_for_function("() => { const c = document.querySelector('#player track').track.activeCues; return c && c.length > 0; }")

    # Reloaded, the page reopens the job from the address: the saved text, the export,
    # and a player streaming the server's copy through a signed link.
    page.reload()
    expect(page.locator("#job-status")).to_contain_text("Done")
    expect(segments).to_have_count(1)
    expect(segments.first.locator("textarea")).to_have_value("Edited in the browser")
    expect(page.locator("#player-box")).to_be_visible()
    assert "/media?token=" in page.evaluate("document.getElementById('player').src")
    expect(page.get_by_role("link", name=re.compile(r"^Download MKV"))).to_be_visible()
    page.get_by_role("button", name="Close").click()
    expect(page.locator("#job")).to_be_hidden()
    page.get_by_role("button", name="Open talk.mp4").click()
    expect(segments.first.locator("textarea")).to_have_value("Edited in the browser")


@needs_browser
def test_queue_position_while_waiting(make_server: Callable[..., LiveServer], page: Any, clip: Path) -> None:
    from playwright.sync_api import expect

    from batching.fake_engine import FakeEngine

    hold = asyncio.Event()
    live = make_server(engine_factory=lambda c: (FakeEngine(hold=hold), True, "fake"), **{"limits.max_running_jobs": 1})
    with live.client() as client, open(clip, "rb") as fh:
        assert client.post("/v1/jobs", files={"file": ("first.mp4", fh)}).status_code == 202
    page.goto(live.url + "/")
    page.set_input_files("#file", str(clip))
    page.get_by_role("button", name="Upload and transcribe").click()
    expect(page.locator("#job-status")).to_contain_text("Queued: next in line")
    expect(page.locator("#job-progress")).to_be_visible()
    live.extra["loop"].call_soon_threadsafe(hold.set)
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=30_000)
    expect(page.locator("#segments > li")).not_to_have_count(0)


@needs_browser
def test_stream_resumes_after_a_server_restart(
    make_server: Callable[..., LiveServer], page: Any, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page reconnects by itself, with Last-Event-ID, to the server that comes back on the same address."""
    from playwright.sync_api import expect

    import tests.conftest as conftest
    from batching.fake_engine import FakeEngine

    hold = asyncio.Event()
    data_dir = tmp_path / "data"
    first = make_server(engine_factory=lambda c: (FakeEngine(hold=hold), True, "fake"), data_dir=data_dir)
    page.goto(first.url + "/")
    page.evaluate("window.sameDocument = true")
    page.set_input_files("#file", str(clip))
    page.get_by_role("button", name="Upload and transcribe").click()
    expect(page.locator("#job-status")).to_contain_text("Transcribing")

    # The engine never answers; the server goes away mid-job and comes back on the same port.
    first.stop()
    port = int(first.url.rsplit(":", 1)[1])
    monkeypatch.setattr(conftest, "free_port", lambda: port)
    second = make_server(data_dir=data_dir)
    assert second.url == first.url

    expect(page.locator("#job-status")).to_contain_text("Done", timeout=30_000)
    assert page.evaluate("window.sameDocument") is True
    with second.client() as client:
        job_id = client.get("/v1/jobs").json()["jobs"][0]["id"]
        texts = [s["text"] for s in client.get(f"/v1/jobs/{job_id}/transcript").json()["segments"]]
    expect(page.locator("#segments li textarea")).to_have_count(len(texts))
    assert page.eval_on_selector_all("#segments li textarea", "rows => rows.map(r => r.value)") == texts


@needs_browser
def test_bad_file_shows_the_servers_message(make_server: Callable[..., LiveServer], page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    live = make_server()
    bad = tmp_path / "notes.mp4"
    bad.write_text("these are meeting notes, not a video\n" * 20)
    with live.client() as client, open(bad, "rb") as fh:
        answer = client.post("/v1/jobs", files={"file": (bad.name, fh)})
    assert answer.status_code == 415
    message = answer.json()["error"]["message"]

    page.goto(live.url + "/")
    page.set_input_files("#file", str(bad))
    page.get_by_role("button", name="Upload and transcribe").click()
    expect(page.locator("#upload-error")).to_have_text(message)
    expect(page.get_by_role("button", name="Upload and transcribe")).to_be_enabled()
    expect(page.locator("#job")).to_be_hidden()


@needs_browser
def test_with_keys_on_the_page_sends_the_key(make_server: Callable[..., LiveServer], page: Any, clip: Path, tmp_path: Path) -> None:
    """Uploads, the event stream, the track and downloads all carry the key; without one, the 401 reads as written."""
    from playwright.sync_api import expect

    from tests.conftest import add_keys

    data_dir = tmp_path / "data"
    key = add_keys(data_dir, "alice")["alice"]
    live = make_server(data_dir=data_dir, **{"auth.enabled": True})
    with live.client() as client:
        refusal = client.get("/v1/jobs").json()["error"]["message"]

    page.goto(live.url + "/")
    expect(page.locator("#jobs-error")).to_have_text(refusal)
    expect(page.locator("#key-box")).to_have_attribute("open", "")  # opened by the 401
    page.get_by_label("Key (kept in this browser only)").fill(key)
    page.keyboard.press("Tab")
    expect(page.locator("#jobs-empty")).to_be_visible()
    expect(page.locator("#jobs-error")).to_be_hidden()
    page.reload()  # the key stays in localStorage
    expect(page.get_by_label("Key (kept in this browser only)")).to_have_value(key)

    page.set_input_files("#file", str(clip))
    page.get_by_role("button", name="Upload and transcribe").click()
    expect(page.locator("#job-status")).to_contain_text("Done", timeout=60_000)
    page.wait_for_function("() => { const t = document.querySelector('#player track'); return t && t.src.startsWith('blob:'); }")
    name, data = read_download(page, page.get_by_role("button", name="WebVTT").click)
    assert name == "talk.vtt" and data.startswith(b"WEBVTT")
    with live.client() as client:
        assert len(client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).json()["jobs"]) == 1

    # After a reload the player cannot send the key: it plays through the signed link.
    page.reload()
    expect(page.get_by_label("Text of segment 1")).to_be_visible()
    page.wait_for_function("() => { const p = document.getElementById('player'); return p.src.includes('/media?token=') && p.readyState >= 1; }")
    with live.client() as client:
        assert client.get(page.evaluate("document.getElementById('player').src").split("?")[0]).status_code == 401

    # Delete from "My jobs" (after the browser's own confirmation): the open job closes too.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete talk.mp4").click()
    expect(page.locator("#jobs-empty")).to_be_visible()
    expect(page.locator("#job")).to_be_hidden()
    with live.client() as client:
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).json()["jobs"] == []


@needs_browser
def test_two_uploads_then_the_editor_after_a_reload(make_server: Callable[..., LiveServer], page: Any, clip: Path, tmp_path: Path) -> None:
    """Two files at once, a zip of both SRTs; split, merge, insert, undo, timing from the
    playhead, a reading-speed warning; then a reload plays the server's copy, with Range."""
    import zipfile

    from playwright.sync_api import expect

    live = make_server()
    other = tmp_path / "other.mp4"
    other.write_bytes(clip.read_bytes())
    page.goto(live.url + "/")
    page.set_input_files("#file", [str(clip), str(other)])
    expect(page.locator("#file-name")).to_contain_text("2 files")
    page.get_by_label("Word timestamps").check()
    page.get_by_label("Vocabulary and names (optional)").fill("altyazi, Kübra")
    page.get_by_role("button", name="Upload and transcribe").click()
    queue = page.locator("#upload-queue li")
    expect(queue).to_have_count(2)
    expect(page.locator("#job-title")).to_have_text("talk.mp4")  # the first opens at once
    zip_button = page.get_by_role("button", name="Download all SRTs (.zip)")
    expect(zip_button).to_be_visible(timeout=60_000)
    expect(queue.nth(1)).to_contain_text("Done")
    name, data = read_download(page, zip_button.click)
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert name == "subtitles.zip" and archive.namelist() == ["talk.srt", "other.srt"] and archive.testzip() is None
    assert "window 0" in archive.read("other.srt").decode()
    with live.client() as client:
        jobs = client.get("/v1/jobs").json()["jobs"]
        assert {j["options"]["initial_prompt"] for j in jobs} == {"altyazi, Kübra"}
        job_id = next(j["id"] for j in jobs if j["filename"] == "talk.mp4")

    def server_texts() -> list[str]:
        with live.client() as client:
            return [s["text"] for s in client.get(f"/v1/jobs/{job_id}/transcript").json()["segments"]]

    def saved() -> None:
        expect(page.locator("#save-status")).to_contain_text("All changes saved")

    rows = page.locator("#segments > li")
    text1 = page.get_by_label("Text of segment 1")
    expect(text1).to_have_value("window 0")

    # Split at the cursor (after "window"), then merge back, insert, undo and redo.
    text1.click()
    text1.evaluate("t => t.setSelectionRange(6, 6)")
    page.get_by_role("button", name="Split at cursor").click()
    expect(rows).to_have_count(2)
    expect(page.get_by_label("Text of segment 2")).to_have_value("0")
    saved()
    assert server_texts() == ["window", "0"]
    text1.click()
    page.get_by_role("button", name="Merge with next").click()
    expect(rows).to_have_count(1)
    expect(text1).to_have_value("window 0")
    page.get_by_role("button", name="Insert cue").click()
    expect(rows).to_have_count(2)
    page.get_by_label("Text of segment 2").fill("Inserted")
    saved()
    assert server_texts() == ["window 0", "Inserted"]
    page.keyboard.press("Control+z")  # the typing, then the insert
    page.get_by_role("button", name="Undo").click()
    expect(rows).to_have_count(1)
    page.get_by_role("button", name="Redo").click()
    expect(rows).to_have_count(2)
    page.keyboard.press("Alt+Delete")
    expect(rows).to_have_count(1)
    saved()
    assert server_texts() == ["window 0"]

    # Start from the playhead, and a nudge.
    page.evaluate("() => { const p = document.getElementById('player'); p.pause(); p.currentTime = 0.4; }")
    text1.click()
    page.get_by_role("button", name="Start from playhead").click()
    expect(page.get_by_label("Start of segment 1")).to_have_value("00:00.400")
    end_before = page.get_by_label("End of segment 1").input_value()
    page.get_by_role("button", name="End 100 ms later").click()
    expect(page.get_by_label("End of segment 1")).not_to_have_value(end_before)
    saved()
    with live.client() as client:
        seg = client.get(f"/v1/jobs/{job_id}/transcript").json()["segments"][0]
    assert seg["start"] == 0.4

    # Too much to read in the time: flagged, and the flag goes with the fix.
    text1.fill("This sentence is much too long to be read in the short time it is shown")
    expect(rows.first.locator(".seg-warnings .warn-cps")).to_contain_text("characters a second (over 17)")
    expect(rows.first.locator(".seg-warnings .warn-line")).to_contain_text("over 42")
    text1.fill("Short and clear")
    expect(rows.first.locator(".seg-warnings li")).to_have_count(0)
    saved()

    # The export and the downloads are the edited text.
    name, data = read_download(page, page.get_by_role("button", name="SRT", exact=True).click)
    srt = data.decode("utf-8")
    assert "Short and clear" in srt and "00:00:00,400 -->" in srt

    # A word the model was unsure of is marked (word timestamps carry the probabilities).
    with live.client() as client:
        base = f"/v1/jobs/{job_id}/transcript"
        seg = client.get(base).json()["segments"][0]
        mid = round((seg["start"] + seg["end"]) / 2, 3)
        words = [{"start": seg["start"], "end": mid, "word": "Short", "probability": 0.95},
                 {"start": mid, "end": seg["end"], "word": " and clear", "probability": 0.2}]
        assert client.put(base, json={"segments": [{**seg, "words": words}]}).status_code == 200

    # Reloaded, without the local file: the server's copy plays, fetched with Range.
    media_answers: list[int] = []
    page.on("response", lambda r: media_answers.append(r.status) if "/media?token=" in r.url else None)
    page.reload()
    expect(page.get_by_label("Text of segment 1")).to_have_value("Short and clear")
    expect(rows.first.locator("mark.low")).to_have_text(" and clear")
    expect(page.locator("#waveform")).to_be_visible()
    assert "/media?token=" in page.evaluate("document.getElementById('player').src")
    page.evaluate("() => { const p = document.getElementById('player'); p.muted = true; return p.play(); }")
    page.wait_for_function("() => document.getElementById('player').currentTime > 0.3")
    page.evaluate("() => { const p = document.getElementById('player'); p.pause(); p.currentTime = 1.0; }")
    expect(rows.first).to_have_attribute("aria-current", "true")
    assert 206 in media_answers, media_answers

    # For the screenshots: two cues, the second one current, with a warning.
    page.get_by_label("Text of segment 1").evaluate("t => { t.focus(); t.setSelectionRange(5, 5); }")
    page.keyboard.press("Control+Enter")
    expect(rows).to_have_count(2)
    saved()
    # The caption follows the edit (the track is made again from the cues).
    page.wait_for_function("() => { const t = document.querySelector('#player track'); const c = t && t.track.activeCues; return c && c.length > 0 && c[0].text === 'Short'; }")
    page.mouse.move(0, 0)
    page.evaluate("document.activeElement.blur()")
    browser.save_screenshot(page, SCREENSHOTS / "desktop.png")
    page.set_viewport_size(browser.PHONE)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, "the page scrolls sideways at phone width"
    page.evaluate("document.getElementById('waveform').scrollIntoView()")
    browser.save_screenshot(page, SCREENSHOTS / "phone.png", full_page=False)


@needs_browser
def test_cue_operations_in_the_page(make_server: Callable[..., LiveServer], page: Any) -> None:
    """static/cues.js, the editor's pure part, on hard cases; run where it runs, in Chromium."""
    live = make_server()
    page.goto(live.url + "/")
    page.wait_for_function("() => !!window.altyaziCues")
    got = page.evaluate(
        """() => {
          const C = window.altyaziCues;
          const timed = [{ start: 1, end: 3, text: "Hello there world", words: [
            { start: 1, end: 1.5, word: "Hello", probability: 0.9 },
            { start: 1.6, end: 2.2, word: " there", probability: 0.3 },
            { start: 2.3, end: 3, word: " world", probability: 0.9 }] }];
          const split = C.split(timed, 0, 5);          // after "Hello": at the word " there"
          const plain = C.split([{ start: 0, end: 4, text: "abcd" }], 0, 1);
          const merged = C.merge(split, 0, "en");
          const cjk = C.merge([{ start: 0, end: 1, text: "你好" }, { start: 1, end: 2, text: "世界" }], 0, "zh");
          const two = [{ start: 0, end: 1, text: "a" }, { start: 2, end: 3, text: "b" }];
          const inserted = C.insertAfter(two, 0, 0, 10);
          const squeezed = C.insertAfter([{ start: 0, end: 2, text: "a" }, { start: 2, end: 3, text: "b" }], 0, 0, 10);
          const fast = C.warnings([{ start: 0, end: 1, text: "x".repeat(30) }], 0).map((w) => w.kind);
          const overlap = C.warnings([{ start: 0, end: 2, text: "a" }, { start: 1.5, end: 3, text: "b" }], 0).map((w) => w.kind);
          const replaced = C.replaceAll(two.concat([{ start: 4, end: 5, text: "A.b (a)" }]), "a", "x", false);
          return {
            split: split.map((s) => [s.start, s.end, s.text, (s.words || []).map((w) => w.word)]),
            plain: plain.map((s) => [s.start, s.end, s.text]),
            merged: [merged.length, merged[0].text, merged[0].words.length, merged[0].end],
            cjk: cjk[0].text,
            inserted: inserted.map((s) => [s.start, s.end]),
            squeezed: squeezed.map((s) => [s.start, s.end]),
            fast, overlap,
            replaced: [replaced.count, replaced.segs.map((s) => s.text)],
            diffNone: C.diff(two, two.map(C.copy)).kind,
            diffPatch: C.diff(two, C.change(two, 1, { text: "c" })),
            diffPut: C.diff(two, C.remove(two, 0)).kind,
            textDropsWords: "words" in C.change(timed, 0, { text: "new" })[0],
            vtt: C.toVtt([{ start: 61.5, end: 62, text: "<i>a</i> & b" }]),
            eta: [C.etaText(null), C.etaText(20), C.etaText(70), C.etaText(125), C.etaText(7500)],
          };
        }"""
    )
    assert got["split"] == [[1, 1.6, "Hello", ["Hello"]], [1.6, 3, "there world", [" there", " world"]]]
    assert got["plain"] == [[0, 1, "a"], [1, 4, "bcd"]]
    assert got["merged"] == [1, "Hello there world", 3, 3]
    assert got["cjk"] == "你好世界"
    assert got["inserted"] == [[0, 1], [1, 2], [2, 3]]
    assert got["squeezed"] == [[0, 1], [1, 2], [2, 3]]
    assert got["fast"] == ["cps"] and "overlap" in got["overlap"]
    assert got["replaced"] == [3, ["x", "b", "x.b (x)"]]
    assert got["diffNone"] == "none" and got["diffPut"] == "put"
    assert got["diffPatch"] == {"kind": "patch", "index": 1, "fields": {"text": "c"}}
    assert got["textDropsWords"] is False
    assert got["vtt"] == "WEBVTT\n\n00:01:01.500 --> 00:01:02.000\n&lt;i&gt;a&lt;/i&gt; &amp; b\n"
    assert got["eta"] == [None, "less than a minute left", "about 1 min left", "about 2 min left", "about 2 h 5 min left"]


@needs_browser
def test_the_playing_cue_is_kept_in_view_inside_the_list(make_server: Callable[..., LiveServer], page: Any, clip: Path) -> None:
    from playwright.sync_api import expect

    live = make_server()
    with live.client() as client, open(clip, "rb") as fh:
        job_id = client.post("/v1/jobs", files={"file": ("talk.mp4", fh)}).json()["id"]
        wait_done(client, job_id)
        duration = client.get(f"/v1/jobs/{job_id}").json()["duration_s"]
        step = duration / 40
        cues = [{"start": round(k * step, 3), "end": round((k + 1) * step - 0.001, 3), "text": f"cue {k + 1}"} for k in range(40)]
        assert client.put(f"/v1/jobs/{job_id}/transcript", json={"segments": cues}).status_code == 200
    page.goto(f"{live.url}/#job={job_id}")
    rows = page.locator("#segments > li")
    expect(rows).to_have_count(40)
    page.wait_for_function("() => document.getElementById('player').readyState >= 1")
    page_scroll = page.evaluate("window.scrollY")
    page.evaluate(f"() => {{ document.getElementById('player').currentTime = {round(38.5 * step, 3)}; }}")
    expect(rows.nth(38)).to_have_attribute("aria-current", "true")
    page.wait_for_function("() => { const l = document.getElementById('segments'), r = l.children[38]; return r.offsetTop >= l.scrollTop && r.offsetTop + r.offsetHeight <= l.scrollTop + l.clientHeight; }")
    assert page.evaluate("window.scrollY") == page_scroll  # the list scrolled, not the page
