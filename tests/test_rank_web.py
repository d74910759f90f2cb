"""`llmtune rank FILE --web` as people use it: the real CLI serves the page, a real headless
Chromium (the OS package, driven by Playwright) ranks with the keyboard and the mouse, and the
file on disk is what the assertions read.

Needs `apt-get install chromium` and `pip install playwright` (the browser tests are skipped with
the reason when either is missing). LLMTUNE_SCREENSHOT=1 saves docs/img/rank-web.png."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, write_jsonl

CHROMIUM = "/usr/bin/chromium"
HANG_GUARD_S = 600  # only a guard against a hang, never a speed check: the machine may be busy
ROWS = [
    {
        "id": "r1",
        "prompt": "Question: how do I reset my password?\nAnswer:",
        "responses": [
            " Use the 'forgot password' link on the sign-in page; the e-mail arrives within a minute.",
            " No.",
            " Ask support, they help.",
        ],
        "ranking": "",
    },
    {"id": "r2", "prompt": "Where is my order?", "responses": [" It ships tomorrow.", " ?"], "ranking": ""},
    {
        "id": "r3",
        "prompt": "Refund?",
        "responses": [
            "<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>",
            " Yes, within 30 days.",
            " <b>maybe</b>",
        ],
        "ranking": "",
    },
]


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


class Server:
    """`llmtune rank --web` in the background; `url` is the page's URL with its token."""

    def __init__(self, path: Path, *args: str) -> None:
        self.log = path.parent / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmtune", "rank", str(path), "--web", *args],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )
        deadline = time.monotonic() + HANG_GUARD_S
        while "rank in your browser: " not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.1)
        self.url = self.log.read_text().split("rank in your browser: ")[1].split()[0]
        self.base, self.token = self.url.split("/?token=")

    def stop(self) -> str:
        """Ctrl-C: a normal quit (exit 130, no error line); what the server printed."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(timeout=HANG_GUARD_S) == 130, self.log.read_text()
        text = self.log.read_text()
        assert "error:" not in text and "Traceback" not in text, text
        return text


@pytest.fixture
def cands(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "cands.jsonl", ROWS)


@pytest.fixture
def server(cands: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    started = Server(cands, *getattr(request, "param", ()))
    yield started
    started.stop()


def status_of(url: str, *, headers: dict[str, str] | None = None, body: dict | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=HANG_GUARD_S) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_every_route_needs_the_token(server: Server, cands: Path) -> None:
    answer = {"n": 0, "ranking": "A > B > C", "seen": ""}
    for path in ("/", "/api/state", "/api/row/0"):
        assert status_of(server.base + path) == 403
        assert status_of(server.base + path + "?token=" + server.token[:-1] + "x") == 403
        assert status_of(server.base + path + "?token=" + server.token) == 200
    assert status_of(server.base + "/api/answer", body=answer) == 403
    assert status_of(server.base + "/api/answer", headers={"X-Llmtune-Token": "nope"}, body=answer) == 403
    assert [r["ranking"] for r in rows_of(cands)] == ["", "", ""]  # nothing was saved without it
    good = {"X-Llmtune-Token": server.token, "Content-Type": "application/json"}
    assert status_of(server.base + "/api/answer", headers=good, body=answer) == 200
    assert rows_of(cands)[0]["ranking"] == "A > B > C"


def test_a_bad_host_is_refused_with_one_line(cands: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "llmtune", "rank", str(cands), "--web", "--host", "256.1.1.1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "error: --host/--port: cannot listen on 256.1.1.1" in proc.stderr
    assert not (cands.parent / "cands.jsonl.lock").exists()


# ------------------------------------------------------------------ in a real browser
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no {CHROMIUM}: apt-get install -y chromium chromium-driver")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield launched
        launched.close()


def open_page(browser: object, server: Server, name: str | None = "") -> object:
    """A new tab on the page; `name`: what to answer when it asks who ranks (None: it must not ask)."""
    # bypass_csp: Playwright's own wait_for_function evaluates strings, which the page's CSP forbids;
    # the escaping tested below relies on textContent alone, not on the CSP
    page = browser.new_context(viewport={"width": 1200, "height": 760}, bypass_csp=True).new_page()
    page.goto(server.url)
    if name is not None:
        page.fill("#name", name)
        page.click("#name-ok")
    page.wait_for_selector("#ranking:not([hidden])")
    return page


def counter(page: object, name: str) -> int:
    return int(page.get_attribute("body", f"data-{name}") or 0)


def type_answer(page: object, keys: str, *, moves: bool = True) -> None:
    """Type `keys` and Enter; wait until the page shows the next prompt (or the end), or, with
    `moves=False`, until it says something."""
    name = "step" if moves else "said"
    before = counter(page, name)
    page.focus("#answer")
    page.keyboard.type(keys)
    page.keyboard.press("Enter")
    page.wait_for_function(f"+document.body.dataset.{name} > {before}")


def click_and_wait(page: object, selector: str) -> None:
    before = counter(page, "step")
    page.click(selector)
    page.wait_for_function(f"+document.body.dataset.step > {before}")


def test_three_rows_ranked_with_the_keyboard_then_the_page_says_done(browser, server, cands) -> None:
    page = open_page(browser, server)
    assert page.text_content("#row-name").startswith("r1") and "0 of 3 ranked" in page.text_content(
        "#progress"
    )
    type_answer(page, "cab")  # letters best first
    assert page.text_content("#row-name").startswith("r2")
    type_answer(page, "b=a")
    assert page.text_content("#row-name").startswith("r3")
    assert "2 of 3 ranked, 0 skipped, 1 left" in page.text_content("#progress")
    type_answer(page, "s")  # skip
    assert page.is_visible("#done") and "2 of 3 ranked, 1 skipped, 1 left" in page.text_content("#done-text")
    click_and_wait(page, "#again")
    assert page.text_content("#row-name").startswith("r3")
    type_answer(page, "t")  # all tied
    assert page.is_visible("#done")
    assert [r["ranking"] for r in rows_of(cands)] == ["C > A > B", "B = A", "A = B = C"]
    assert "rankings" not in rows_of(cands)[0]  # no name given: the single ranking field


@pytest.mark.parametrize("server", [("--annotator", "bob")], indirect=True)
def test_three_rows_ranked_with_the_mouse_under_the_annotators_name(browser, server, cands) -> None:
    page = open_page(browser, server, name=None)  # the name comes from --annotator: no question
    assert page.text_content("#who") == "bob"
    for order, ties in ((["B", "C", "A"], set()), (["A", "B"], set()), (["C", "B", "A"], {"A"})):
        for letter in order:
            selector = f".response[data-letter={letter}]"
            page.click(selector + " .tie" if letter in ties else selector)
            if os.environ.get("LLMTUNE_SCREENSHOT") and letter == "C" and len(order) == 3 and not ties:
                (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)  # the picture in docs/ranking.md
                page.screenshot(path=str(ROOT / "docs" / "img" / "rank-web.png"))
        click_and_wait(page, "#save")
    assert page.is_visible("#done")
    rows = rows_of(cands)
    assert [r["rankings"] for r in rows] == [{"bob": "B > C > A"}, {"bob": "A > B"}, {"bob": "C > B = A"}]
    assert [r["ranking"] for r in rows] == ["", "", ""]


def test_a_malformed_ranking_is_refused_on_the_page_and_nothing_is_saved(browser, server, cands) -> None:
    before = cands.read_bytes()
    page = open_page(browser, server)
    type_answer(page, "ab", moves=False)
    assert page.text_content("#message") == "not saved: C not ranked; every one of A..C goes in once"
    type_answer(page, "a>d>b>c", moves=False)  # the refused answer was selected: this replaces it
    assert page.text_content("#message") == "not saved: no response D: the responses are A..C"
    assert cands.read_bytes() == before
    assert page.text_content("#row-name").startswith("r1")  # still on the same prompt


def test_a_second_tab_gets_a_clear_message_instead_of_overwriting(browser, server, cands) -> None:
    first, second = open_page(browser, server), open_page(browser, server)
    type_answer(first, "abc")
    type_answer(second, "cba", moves=False)  # second was shown r1 unranked: its answer is stale
    assert second.text_content("#message") == (
        "r1 was answered elsewhere since this page showed it (it is now 'A > B > C'); not saved"
    )
    assert "current ranking: A > B > C" in second.text_content("#current")
    assert rows_of(cands)[0]["ranking"] == "A > B > C"
    type_answer(second, "cba")  # now it has seen the current ranking: a deliberate change
    assert rows_of(cands)[0]["ranking"] == "C > B > A"


def test_a_reload_continues_at_the_next_unranked_row_under_the_name_given_once(
    browser, server, cands
) -> None:
    page = open_page(browser, server, name="alice")
    type_answer(page, "abc")
    page.reload()  # the name was asked once: it is remembered
    page.wait_for_selector("#ranking:not([hidden])")
    assert page.is_hidden("#name-form") and page.text_content("#who") == "alice"
    assert page.text_content("#row-name").startswith("r2")
    assert "1 of 3 ranked" in page.text_content("#progress")
    assert rows_of(cands)[0]["rankings"] == {"alice": "A > B > C"} and rows_of(cands)[0]["ranking"] == ""


@pytest.mark.slow
def test_html_and_script_in_a_response_are_shown_as_text(browser, server, cands) -> None:
    page = open_page(browser, server)
    type_answer(page, "s")
    type_answer(page, "s")
    assert page.text_content("#row-name").startswith("r3")
    card = page.locator(".response[data-letter=A] .text")
    assert card.text_content() == ROWS[2]["responses"][0]
    assert page.locator("#responses img, #responses script, #responses b").count() == 0
    assert page.evaluate("window.pwned") is None
