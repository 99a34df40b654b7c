"""In a browser: Playwright (pip) drives Debian's headless Chromium through every tab of `python app.py`.

It types a query, uploads an image, runs a search and checks that the decision, the augmentation and the gallery
appear; clicks an example and sees the known answer judged; compares; indexes a custom corpus; runs a small
evaluation in the error explorer and opens a query; reads the model panel. Every network request the page makes
is recorded, and the test fails on any that leaves 127.0.0.1. Screenshots of each tab go to
outputs/screenshots/ (git-ignored)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from msolomon.demo.process import ROOT

CHROMIUM = os.environ.get("MSOLOMON_CHROMIUM", "/usr/bin/chromium")
SHOTS = ROOT / "outputs" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-default-apps"]

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)


def _outside(urls: list[str]) -> list[str]:
    """Requests that leave the machine: anything but 127.0.0.1 (data: and blob: URLs never leave it)."""
    out = []
    for url in urls:
        parsed = urlparse(url)
        if parsed.scheme in ("data", "blob", "about", "chrome-extension"):
            continue
        if parsed.hostname != "127.0.0.1":
            out.append(url)
    return out


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _open(playwright, url: str, requests: list[str]):
    """Chromium with the demo's page loaded, every request it makes recorded: (browser, page)."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    page.set_default_timeout(60_000)
    try:
        page.goto(url)
        page.wait_for_selector("#search-button")
    except Exception:
        browser.close()
        raise
    return browser, page


def test_every_tab_in_chromium(tmp_path, sample_images, demo_server):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    text_file = tmp_path / "my candidates.txt"
    text_file.write_text("a photo of an astronaut\na cup of coffee\na cat\n", encoding="utf-8")
    url = demo_server[0]
    with sync_playwright() as p:
        browser, page = _open(p, url, requests)
        try:

            # Search: a typed query, an uploaded image, mode always, an image-only corpus
            typed = "How many shapes are in the picture?"
            page.locator("#query-text textarea").fill(typed)
            page.locator("#query-image input[type=file]").set_input_files(sample_images[0])
            page.locator("#mode").get_by_text("always", exact=True).click()
            corpus = page.get_by_label("Corpus")
            corpus.click()
            page.get_by_role("option", name="MiniMMEB: ScenesT2I").click()
            page.click("#search-button")
            expect(page.locator("#decision")).to_contain_text("/augment")
            expect(page.locator("#hits table")).to_be_visible()
            expect(page.locator("#augmentation textarea")).not_to_have_value("")
            expect(page.locator("#gallery img").first).to_be_visible()
            expect(page.locator(".latency")).to_contain_text("total")
            expect(page.locator("#what-if")).to_contain_text("What if: without augmenting")  # the search is over
            page.screenshot(path=str(SHOTS / "1-search.png"), full_page=True)

            # an empty file as the image: the demo names it (not gradio's "Could not preprocess input"), and the
            # previous results are cleared, not left under the error
            empty = tmp_path / "empty.png"
            empty.write_bytes(b"")
            page.locator("#query-image input[type=file]").set_input_files(str(empty))
            page.click("#search-button")
            expect(page.get_by_text("empty.png").first).to_be_visible()
            expect(page.locator("#hits table")).to_have_count(0)
            page.screenshot(path=str(SHOTS / "1b-search-bad-image.png"), full_page=True)

            # an example with its known answer: judged right or wrong
            page.get_by_text("ScenesVQA (vqa").click()
            expect(page.locator("#query-text textarea")).not_to_have_value(typed)  # the example has loaded
            expect(page.locator("#mode input[value=auto]")).to_be_checked()
            page.click("#search-button")
            expect(page.locator("#hits")).to_contain_text("the known answer")
            expect(page.locator("#what-if")).to_contain_text("Known answer")
            page.screenshot(path=str(SHOTS / "2-search-example.png"), full_page=True)

            _tab(page, "Compare")
            page.click("#compare-button")
            # with the shipped baselines, the first comparison loads NoAug and AlwaysAug and indexes the corpus
            # with each: seconds, not the 5 s default
            expect(page.locator("#compare")).to_contain_text("M-Solomon · always", timeout=180_000)
            expect(page.locator("#compare")).to_contain_text("NoAug model")
            page.screenshot(path=str(SHOTS / "3-compare.png"), full_page=True)

            _tab(page, "Corpora")
            page.locator("#corpus-images input[type=file]").set_input_files(sample_images[:2])
            page.locator("#corpus-text input[type=file]").set_input_files(str(text_file))
            page.get_by_role("button", name="Index").click()
            expect(page.get_by_text("Indexed")).to_be_visible()
            expect(page.locator("#corpora-table")).to_contain_text("custom: my corpus")
            page.screenshot(path=str(SHOTS / "4-corpora.png"), full_page=True)

            # a second visitor (another browser profile: its own storage) never sees the first one's corpus
            other = browser.new_context(viewport={"width": 1400, "height": 1000})
            other.on("request", lambda r: requests.append(r.url))
            second = other.new_page()
            second.set_default_timeout(60_000)
            second.goto(url)
            _tab(second, "Corpora")
            expect(second.locator("#corpora-table")).to_contain_text("MiniMMEB: ScenesT2I")
            expect(second.locator("#corpora-table")).not_to_contain_text("custom: my corpus")
            second.screenshot(path=str(SHOTS / "4b-corpora-other-visitor.png"), full_page=True)
            # nor can it fetch the first visitor's uploaded images, the test answers or an index by their paths
            cache = demo_server[1]
            for path in (next(cache.glob("uploads/*/*.png")), next(cache.rglob("oracle.jsonl")),
                         next(cache.rglob("index.faiss"))):
                got = second.request.get(f"{url.rstrip('/')}/gradio_api/file={path}")
                assert got.status == 403, (path, got.status)
            other.close()
            # the first visitor's reload finds it again
            page.reload()
            _tab(page, "Corpora")
            expect(page.locator("#corpora-table")).to_contain_text("custom: my corpus")

            _tab(page, "Error explorer")
            page.get_by_text("Run the evaluation on a small MiniMMEB subset").click()
            page.get_by_label("number input for Queries per dataset").fill("4")  # three sets, three modes
            page.get_by_label("number input for Queries per dataset").press("Enter")
            page.get_by_role("button", name="Run evaluation").click()
            expect(page.locator("#explorer-table")).to_contain_text("never", timeout=180_000)
            page.locator("#explorer-queries [role=gridcell]").nth(1).click()
            expect(page.locator("#explorer-detail")).to_contain_text("top candidates")
            page.screenshot(path=str(SHOTS / "5-error-explorer.png"), full_page=True)
            # decision quality (the run had auto, never and always): a click on a count lists those queries
            quality = page.locator("#decision-quality")
            expect(quality).to_contain_text("decision accuracy")
            cells = quality.locator("[role=gridcell]")
            expect(cells.first).to_be_visible()
            width = 11  # QUALITY_HEADERS
            texts = [cells.nth(i).inner_text().strip() for i in range(width)]
            col = next(c for c in range(4, 10) if texts[c] not in ("", "0"))
            cells.nth(col).click()
            expect(page.get_by_role("combobox", name="Decision quality")).to_have_value(
                ["helped", "hurt", "same (augmented)", "missed", "saved", "same (embedded)"][col - 4])
            listed = page.locator("#explorer-queries [role=gridcell]")
            expect(listed.nth(2)).to_have_text("auto")  # the mode column of the first listed query
            page.screenshot(path=str(SHOTS / "5b-decision-quality.png"), full_page=True)

            _tab(page, "Model")
            expect(page.get_by_text("torch threads")).to_be_visible()
            page.screenshot(path=str(SHOTS / "6-model.png"), full_page=True)
        finally:
            browser.close()
    assert requests, "no requests were recorded"
    assert not _outside(requests), f"requests left the machine: {_outside(requests)}"
    for name in ("1-search", "1b-search-bad-image", "2-search-example", "3-compare", "4-corpora",
                 "4b-corpora-other-visitor", "5-error-explorer", "5b-decision-quality", "6-model"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
    shutil.copy(SHOTS / "1-search.png", tmp_path / "last-search.png")  # keep one beside the test's logs


def test_teaching_views_in_chromium(demo_server):
    """What-if on an example, the step-by-step view, and Compare on the ScenesGround example (its candidates are
    crops that share one text): one row per crop, each with its thumbnail and file name."""
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    url = demo_server[0]
    with sync_playwright() as p:
        browser, page = _open(p, url, requests)
        try:
            page.get_by_text("ScenesGround (grounding").click()
            expect(page.get_by_label("Corpus")).to_have_value("MiniMMEB: ScenesGround")
            page.click("#search-button")
            what_if = page.locator("#what-if")
            expect(what_if).to_contain_text("What if", timeout=120_000)
            expect(what_if).to_contain_text("not counted in the search's time")
            expect(what_if).to_contain_text("Known answer")
            expect(what_if.locator("b", has_text="augmenting")).to_be_visible()
            page.screenshot(path=str(SHOTS / "7-what-if.png"), full_page=True)

            _tab(page, "Step by step")
            page.click("#steps-button")
            steps = page.locator("#step-by-step")
            expect(steps).to_contain_text("changes the ranking", timeout=120_000)
            expect(steps).to_contain_text("p(/augment)")
            expect(steps.locator(".tok").first).to_be_visible()
            expect(steps.locator("tr.step-candidate", has_text="✓ answer")).to_have_count(1)
            assert steps.locator("tr.step-prefix").count() >= 2
            page.screenshot(path=str(SHOTS / "8-step-by-step.png"), full_page=True)

            _tab(page, "Compare")
            page.click("#compare-button")
            compare = page.locator("#compare")
            expect(compare).to_contain_text("AlwaysAug model", timeout=180_000)
            rows = compare.locator("tr.candidate")
            n = rows.count()
            assert n >= 10
            names = [rows.nth(i).locator("img").get_attribute("alt") for i in range(n)]
            assert all(names) and len(set(names)) == n, names  # one row per crop, each with its thumbnail
            page.screenshot(path=str(SHOTS / "9-compare-grounding.png"), full_page=True)
        finally:
            browser.close()
    assert not _outside(requests), f"requests left the machine: {_outside(requests)}"
    for name in ("7-what-if", "8-step-by-step", "9-compare-grounding"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
