"""The real app in Debian's Chromium (Playwright drives it; no downloaded browser)."""

import gzip
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from store import import_file
from studio.runner import Runner
from studio.workspace import Workspace

CHROMIUM = "/usr/bin/chromium"
ALIGNSTUDIO = str(Path(sys.executable).parent / "alignstudio")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, hh_file, models_dir, tiny_model):
    """`alignstudio serve` on a free port over a workspace holding the HH sample and one
    finished perplexity run."""
    workspace = Workspace.at(tmp_path / "ws", models_dir=models_dir)
    ws = workspace.root
    with workspace.open_store() as store:
        import_file(store, hh_file, "hh")
        mini = tmp_path / "mini.jsonl"
        mini.write_text("".join(gzip.open(hh_file, "rt", encoding="utf-8").readlines()[:5]))
        import_file(store, mini, "mini")
        runner = Runner(store, workspace)
        assert runner.wait(runner.start_perplexity("mini", str(tiny_model)))["status"] == "succeeded"
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([ALIGNSTUDIO, "serve", "--workspace", ws, "--models-dir", models_dir, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "serve.log").read_text())
            time.sleep(0.5)
    yield url, ws
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--headless", "--disable-gpu",
                                          "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        yield page
        browser.close()


def test_home_shows_the_workspace_counts_datasets_and_runs(server, page):
    url, ws = server
    page.goto(url)
    page.wait_for_selector("[data-stat=pairs]", timeout=60_000)
    assert page.inner_text("[data-stat=pairs]") == "1,000"
    assert page.inner_text("[data-stat=runs]") == "1"
    datasets, runs = (" ".join(page.inner_text(f"#{name}").split()) for name in ("datasets-table", "runs-table"))
    assert "hh 1000 1000" in datasets and "mini 5 5" in datasets
    assert "1 perplexity succeeded 100% scored 10 responses" in runs

    # Run controls answer in the page: a finished run cannot be resumed.
    page.get_by_role("spinbutton", name="Run").fill("1")
    page.get_by_role("button", name="Resume run").click()
    page.get_by_text("only cancelled or failed runs resume").wait_for(timeout=30_000)


def test_build_dataset_scores_as_a_job_previews_the_filter_and_saves(server, page, tiny_model):
    url, ws = server
    page.goto(url)
    page.get_by_role("tab", name="Build dataset").click()
    page.get_by_role("combobox", name="Dataset").click()
    page.get_by_role("option", name="hh", exact=True).click()
    page.get_by_label("Target model").fill(str(tiny_model))
    page.get_by_label("Target model").press("Enter")
    page.get_by_text("responses of 'hh' have no perplexity").wait_for(timeout=30_000)

    page.get_by_role("button", name="Score perplexity").click()
    # The 10 responses the fixture's run scored (the "mini" pairs are also in "hh") are not scored again.
    page.get_by_text("succeeded - scored 1990 responses").wait_for(timeout=300_000)
    counts = page.locator("#filter-counts")
    counts.get_by_text("Keeps 500 of 1,000 prompts, 1,000 of 2,000 responses, 500 of 1,000 pairs of 'hh'").wait_for(timeout=30_000)

    page.get_by_label("New dataset name").fill("hh-plausible")
    page.get_by_role("button", name="Save filtered dataset").click()
    page.get_by_text("Saved: 'hh-plausible' keeps 500 of 1,000 prompts").wait_for(timeout=30_000)
    page.screenshot(path=str(ws.parent / "build.png"), full_page=True)
