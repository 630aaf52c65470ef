"""The real app in Debian's Chromium (Playwright drives it; no downloaded browser)."""

import gzip
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from store import import_file
from studio import service
from studio.runner import Runner, free_port
from studio.workspace import Workspace

from helpers import ALIGNSTUDIO, make_pairs

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)"),
]


def serve(workspace: Workspace, log_path: Path, *extra: str) -> tuple[str, subprocess.Popen]:
    """Start `alignstudio serve` over `workspace` on a free port (with `extra` options); its URL and process."""
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([ALIGNSTUDIO, "serve", "--workspace", workspace.root, "--models-dir", workspace.models_dir,
                             "--port", str(port), *extra], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(log_path.read_text()) from None
            time.sleep(0.5)
    return url, proc


@pytest.fixture
def server(tmp_path, pairs_file, models_dir, tiny_model):
    """The app over a workspace holding the HH sample and one finished perplexity run."""
    workspace = Workspace.at(tmp_path / "ws", models_dir=models_dir)
    with workspace.open_store() as store:
        import_file(store, pairs_file, "hh")
        import_file(store, mini_file(tmp_path, pairs_file, rows=100, name="hh100"), "hh100")  # to score: 100 pairs
        import_file(store, mini_file(tmp_path, pairs_file), "mini")
        runner = Runner(store, workspace)
        assert runner.wait(service.start_perplexity(runner, "mini", model=str(tiny_model)))["status"] == "succeeded"
    url, proc = serve(workspace, tmp_path / "serve.log")
    yield url, workspace.root
    proc.terminate()
    proc.wait(timeout=30)


def mini_file(tmp_path: Path, pairs_file: Path, rows: int = 5, name: str = "mini") -> Path:
    """The first `rows` HH pairs as a small JSONL file."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(gzip.open(pairs_file, "rt", encoding="utf-8").readlines()[:rows]))
    return path


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

    # Run controls: only runs that can be cancelled or resumed are offered (the one run succeeded),
    # and with none the buttons cannot be pressed (no red button with nothing to act on).
    page.locator("#home-run").click()
    assert page.get_by_role("option").count() == 0
    assert page.get_by_role("button", name="Resume run").is_disabled()
    assert page.get_by_role("button", name="Cancel run").is_disabled()


def test_home_maps_where_a_dataset_stands_and_its_next_step_opens_the_right_tab(server, page):
    """Pairs that came with verdicts: the map marks prompts to labels done and the reward model
    next; the next-step button opens the Train tab on the reward model and that dataset."""
    url, ws = server
    page.goto(url)
    loop = page.locator("#home-map")
    loop.get_by_text("1,000 pairs with a preference; labels by source 1,000").wait_for(timeout=60_000)
    assert "→ reward model" in " ".join(loop.inner_text().split())
    page.screenshot(path=str(ws.parent / "home-map.png"), full_page=True)
    page.get_by_role("button", name="Next step: Train a reward model").click()
    page.get_by_role("radio", name="Reward model").wait_for(timeout=30_000)
    assert page.get_by_role("radio", name="Reward model").is_checked()
    page.wait_for_function("""() => Array.from(document.querySelectorAll('input[role=listbox], input'))
        .some(i => i.getAttribute('aria-label') === 'Pairs' && i.value === 'hh')""", timeout=30_000)
    page.screenshot(path=str(ws.parent / "home-next.png"), full_page=True)


def test_build_dataset_scores_as_a_job_previews_the_filter_and_saves(server, page, tiny_model):
    url, ws = server
    page.goto(url)
    page.get_by_role("tab", name="Build dataset").click()
    page.get_by_role("combobox", name="Dataset").click()
    page.get_by_role("option", name="hh100", exact=True).click()
    page.get_by_label("Target model").fill(str(tiny_model))
    page.get_by_label("Target model").press("Enter")
    page.get_by_text("responses of 'hh100' have no perplexity").wait_for(timeout=30_000)

    page.get_by_role("button", name="Score perplexity").click()
    # The 10 responses the fixture's run scored (the "mini" pairs are also in "hh100") are not scored again.
    page.get_by_text("succeeded - scored 190 responses").wait_for(timeout=300_000)
    counts = page.locator("#filter-counts")
    preview = re.compile(r"Keeps (\d+) of 100 prompts, 100 of 200 responses, (\d+) of 100 pairs of 'hh100'")
    counts.get_by_text(preview).wait_for(timeout=30_000)
    prompts, pairs = preview.search(counts.inner_text()).groups()
    # Both histograms draw both sides of the pairs (the plots first showed the fixture's 10 scores).
    for plot in ("#filter-before", "#filter-after"):
        page.wait_for_function(f"""() => ['chosen', 'rejected'].every(side => Array.from(document.querySelectorAll(
            '{plot} path[aria-roledescription="bar"]')).some(p => (p.getAttribute('aria-label') || '')
            .includes('side: ' + side) && !(p.getAttribute('aria-label') || '').includes('responses: 0')))""",
                               timeout=30_000)

    page.get_by_label("New dataset name").fill("hh-plausible")
    page.get_by_role("button", name="Save filtered dataset").click()
    # What is saved is what the preview said.
    page.get_by_text(f"Saved: 'hh-plausible' keeps {prompts} of 100 prompts, 100 of 200 responses, {pairs} of 100 "
                     "pairs").wait_for(timeout=30_000)
    page.screenshot(path=str(ws.parent / "build.png"), full_page=True)


@pytest.fixture
def mini_workspace(tmp_path, pairs_file, models_dir) -> Workspace:
    """A workspace holding 'mini': the first 5 HH pairs, with the file's verdicts."""
    workspace = Workspace.at(tmp_path / "ws", models_dir=models_dir)
    with workspace.open_store() as store:
        import_file(store, mini_file(tmp_path, pairs_file), "mini")
    return workspace


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--headless", "--disable-gpu",
                                          "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


def open_label_tab(browser, url: str, annotator: str, dataset: str = "mini"):
    """A fresh browser context (its own session) on the Label tab, labelling `dataset` as `annotator`."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.goto(url)
    page.get_by_role("tab", name="Label").click()
    page.get_by_role("combobox", name="Dataset").first.click()
    page.get_by_role("option", name=dataset, exact=True).click()
    page.get_by_label("Annotator").fill(annotator)
    page.get_by_role("button", name="Start labelling").click()
    page.get_by_text(f"{annotator}: 0 of").wait_for(timeout=30_000)
    return page


def shown_pair(page) -> str | None:
    """The id of the pair the page shows, or None when its queue is done."""
    if "No more pairs" in page.inner_text("#label-status"):
        return None
    return page.inner_text("#label-pair-id").split()[1]


# What an internal error looks like in the page: Gradio's red "Error" badge on a component, or a
# toast holding Python's words (a raw exception, a validation message about values).
PYTHON_WORDS = re.compile(r"Traceback|__type__|is not in the list of choices|is (less|greater) than (minimum|maximum)|"
                          r"\b[A-Z][A-Za-z]+(Error|Exception)\b|object has no attribute|NoneType|unexpected keyword")


def internal_errors(page) -> list[str]:
    """Error badges and exception-like toasts now on the page (empty when there are none)."""
    badges = page.evaluate("""() => Array.from(document.querySelectorAll('*')).filter(e => e.childElementCount === 0
        && e.offsetParent !== null && (e.textContent || '').trim() === 'Error'
        && !e.closest('[class*=toast]')).length""")  # a toast's title is no badge: its text is checked below
    toasts = [t.inner_text() for t in page.locator(".toast-body").all()]
    return ([f"{badges} Error badges"] if badges else []) + [t for t in toasts if PYTHON_WORDS.search(t)]


def press_and_wait(page, key: str, annotator: str, labelled_after: int) -> None:
    page.keyboard.press(key)
    page.get_by_text(f"{annotator}: {labelled_after} of").wait_for(timeout=30_000)


def test_data_tab_imports_an_upload_browses_opens_and_exports(tmp_path, pairs_file, models_dir, browser):
    workspace = Workspace.at(tmp_path / "ws", models_dir=models_dir)
    workspace.open_store().close()
    url, proc = serve(workspace, tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Data", exact=True).click()

        # A bad file: nothing is imported and the page names the file, line and reason.
        bad = tmp_path / "broken.jsonl"
        bad.write_text(mini_file(tmp_path, pairs_file).read_text().splitlines()[0] + "\n{not json\n")
        page.locator("#import-file input[type=file]").set_input_files(str(bad))
        page.get_by_role("button", name="Import", exact=True).click()
        page.locator("#import-result").get_by_text("broken.jsonl:2:").wait_for(timeout=30_000)
        assert "nothing imported" in page.inner_text("#import-result")
        assert internal_errors(page) == []

        # No file, or a picture: a sentence each, and the tab goes on working.
        page.locator("#import-file").get_by_role("button", name="Clear").click()
        page.get_by_role("button", name="Import", exact=True).click()
        page.locator("#import-result").get_by_text("Choose a file to import first").wait_for(timeout=30_000)
        picture = tmp_path / "picture.png"
        picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
        page.locator("#import-file input[type=file]").set_input_files(str(picture))
        page.get_by_role("button", name="Import", exact=True).click()
        page.wait_for_timeout(2000)  # the browser refuses it: "Invalid file type: picture.png. Only .jsonl, ..."
        assert internal_errors(page) == []

        # A file of prompts only: its prompts are listed, with what to do to make pairs of them.
        prompts = tmp_path / "questions.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(3)))
        page.locator("#import-file input[type=file]").set_input_files(str(prompts))
        page.get_by_role("button", name="Import", exact=True).click()
        page.get_by_text("Prompts 1–3 of 3 in 'questions' (page 1 of 1)").wait_for(timeout=30_000)
        assert "generate candidate answers in the Build dataset tab" in page.inner_text("#pairs-shown")
        page.locator("#import-file input[type=file]").set_input_files(str(mini_file(tmp_path, pairs_file, rows=30)))
        page.get_by_label("Into dataset").fill("uploaded")
        page.get_by_role("button", name="Import", exact=True).click()
        page.locator("#import-result").get_by_text("imported 30 pairs into dataset 'uploaded'").wait_for(timeout=30_000)
        page.get_by_text("Pairs 1–20 of 30 in 'uploaded' (page 1 of 2)").wait_for(timeout=30_000)
        page.get_by_role("button", name="Next ▶").click()
        page.get_by_text("Pairs 21–30 of 30").wait_for(timeout=30_000)
        page.get_by_label("Page").fill("-3")  # any number is taken: the list clamps it
        page.get_by_label("Page").press("Enter")
        page.get_by_text("Pairs 1–20 of 30 in 'uploaded' (page 1 of 2)").wait_for(timeout=30_000)
        assert internal_errors(page) == []

        page.get_by_label("Search").fill("zürich")
        page.get_by_label("Search").press("Enter")
        page.get_by_text("Pairs 1–1 of 1 matching 'zürich'").wait_for(timeout=30_000)
        page.locator("#pairs-table").get_by_text("Zürich").filter(visible=True).first.click()
        page.locator("#pair-meta").get_by_text("in datasets: uploaded").wait_for(timeout=30_000)
        assert not page.locator("#pair-prompt button[aria-label=Clear]").is_visible()  # no trash on a read-only view
        rejected = make_pairs()[21]["rejected"].split("Assistant: ")[-1]  # the 22nd pair asks about Zürich
        # The whole response, not a preview.
        assert " ".join(rejected.split()) in " ".join(page.inner_text("#pair-second").split())

        page.get_by_text("Export this dataset").click()
        page.get_by_role("button", name="Export", exact=True).click()
        page.get_by_text("wrote 30 pairs to uploaded-conversational.jsonl").wait_for(timeout=30_000)
        with page.expect_download() as download:
            page.locator("a[download]").filter(visible=True).first.click()
        assert len(Path(download.value.path()).read_text().splitlines()) == 30
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def label_five_and_undo(page) -> dict:
    """Label the 5 pairs of 'mini' with keys 1 2 3 4 2, undo the last and answer it 1; returns
    pair id -> (key, left text, right text)."""
    answers = {}
    for n, key in enumerate("12342", start=1):
        pair = shown_pair(page)
        left, right = (page.inner_text(f"#label-{side}-text") for side in ("left", "right"))
        answers[pair] = (key, left, right)
        press_and_wait(page, key, "alice", n)
    assert shown_pair(page) is None  # all 5 done

    page.keyboard.press("u")  # take back the last one: that pair comes back, shown as before
    page.get_by_text("alice: 4 of").wait_for(timeout=30_000)
    undone = shown_pair(page)
    assert answers[undone][1] == page.inner_text("#label-left-text")
    answers[undone] = ("1",) + answers[undone][1:]
    press_and_wait(page, "1", "alice", 5)
    return answers


def test_labelling_with_keys_and_undo_commits_exactly_the_given_labels(tmp_path, mini_workspace, browser):
    url, proc = serve(mini_workspace, tmp_path / "serve.log")
    try:
        answers = label_five_and_undo(open_label_tab(browser, url, "alice"))
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean shutdown: every label was committed as given
        proc.wait(timeout=30)
    with mini_workspace.open_store() as store:
        rows = store.query("""
            SELECT l.pair_id, l.verdict, l.swapped, a.messages AS first, b.messages AS second FROM labels l
            JOIN pairs p ON p.id = l.pair_id JOIN responses a ON a.id = p.first_id
            JOIN responses b ON b.id = p.second_id WHERE l.annotator = 'alice'""")
    assert sorted(r["pair_id"] for r in rows) == sorted(answers)
    expected_verdict = {"3": "tie", "4": "both-bad"}
    for r in rows:
        key, left, right = answers[r["pair_id"]]
        first, second = (words(json.loads(r[side])[0]["content"])[-40:] for side in ("first", "second"))
        assert words(left if not r["swapped"] else right).endswith(first)  # swapped is recorded truly
        if key in expected_verdict:
            assert r["verdict"] == expected_verdict[key]
        else:
            chosen = left if key == "1" else right
            assert words(chosen).endswith(first if r["verdict"] == "first" else second)
    # The killed app starts again on the same workspace and knows every label.
    url, proc = serve(mini_workspace, tmp_path / "serve-again.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Label").click()
        page.get_by_label("Annotator").fill("alice")
        page.get_by_role("button", name="Start labelling").click()
        page.get_by_text(f"alice: {len(rows)} of 5 pairs labelled").wait_for(timeout=30_000)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def words(text: str) -> str:
    """Text with whitespace runs made single spaces (markdown rendering collapses them)."""
    return " ".join(text.split())


def test_two_annotators_never_hold_the_same_pair_and_their_agreement_shows(tmp_path, mini_workspace, browser):
    url, proc = serve(mini_workspace, tmp_path / "serve.log")
    try:
        pages = {name: open_label_tab(browser, url, name) for name in ("alice", "bob")}
        done = {"alice": 0, "bob": 0}
        for _ in range(12):
            shown = {name: shown_pair(page) for name, page in pages.items()}
            held = [p for p in shown.values() if p]
            assert len(held) == len(set(held)), f"both tabs hold {held}"
            for name, page in pages.items():
                if shown[name] is None and done[name] < 5:  # its last pair was held by the other tab
                    page.get_by_role("button", name="Start labelling").click()
                    page.wait_for_timeout(500)
                elif shown[name] is not None:
                    done[name] += 1
                    press_and_wait(page, "1" if name == "alice" else "2", name, done[name])
            if done == {"alice": 5, "bob": 5}:
                break
        assert done == {"alice": 5, "bob": 5}

        page = pages["alice"]
        page.get_by_role("tab", name="Agreement").click()
        page.get_by_role("combobox", name="Dataset").last.click()
        page.get_by_role("option", name="mini", exact=True).last.click()
        page.get_by_text("'mini': 2 annotators (alice, bob)").wait_for(timeout=30_000)
        table = " ".join(page.inner_text("#agreement-table").split())
        assert "alice bob 5" in table and "alice source 5" in table and "bob source 5" in table
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for_lines(page, plot: str, metrics: set[str]) -> None:
    """Wait until the plot draws a line (two points or more: Vega's SVG line marks) for exactly these metrics."""
    drawn = f"""Array.from(document.querySelectorAll('{plot} path[aria-roledescription="line mark"]'))
        .filter(p => (p.getAttribute('d') || '').includes('L'))
        .map(p => (p.getAttribute('aria-label') || '').split('metric: ')[1]).sort()"""
    try:
        page.wait_for_function(
            f"() => JSON.stringify({drawn}) === '{json.dumps(sorted(metrics), separators=(',', ':'))}'", timeout=30_000
        )
    except Exception:
        raise AssertionError(f"{plot} draws {page.evaluate(f'() => {drawn}')}, not {sorted(metrics)}") from None


def test_train_tab_starts_a_reward_model_run_and_follows_it(tmp_path, mini_workspace, tiny_model, browser):
    url, proc = serve(mini_workspace, tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        page.get_by_label("Base model").fill(str(tiny_model))
        page.get_by_role("spinbutton", name="Max steps").fill("6")
        page.get_by_role("spinbutton", name="Batch size").fill("2")
        page.get_by_role("spinbutton", name="Max tokens").fill("256")
        page.get_by_role("button", name="Start training").click()
        page.locator("#train-started").get_by_text("Run 1 started.").wait_for(timeout=120_000)
        summary = page.locator("#train-summary")
        summary.get_by_text("succeeded").wait_for(timeout=240_000)
        assert "reward model trained (6 steps)" in summary.inner_text()
        assert "Report card" in summary.inner_text() and "held-out pairs (95% interval" in summary.inner_text()
        assert "accelerate launch" not in summary.inner_text()  # the runner launches it; no command to copy
        page.get_by_text("Metrics: accuracy (blue), margin (orange)").wait_for(timeout=30_000)
        wait_for_lines(page, "#train-metrics-plot", {"accuracy", "margin"})
        # Unticking a metric redraws the plot without it.
        page.locator("#train-plotted").get_by_label("accuracy", exact=True).uncheck()
        page.get_by_text("Metrics: margin (orange)").wait_for(timeout=30_000)
        wait_for_lines(page, "#train-metrics-plot", {"margin"})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with mini_workspace.open_store() as store:
        assert store.query("SELECT kind, status FROM runs") == [{"kind": "rm", "status": "succeeded"}]
        assert store.query("SELECT name, purpose FROM models") == [{"name": "rm-run1", "purpose": "reward"}]


def test_train_tab_starts_another_method_from_an_empty_page_without_an_error(tmp_path, mini_workspace, tiny_model,
                                                                            browser):
    """The page opens with the reward model's metric choices (no run yet); a DPO run started there
    swaps them for DPO's while the 2 s timer runs, which must never show a refused-value error; and
    the live plots, watched from the run's first step, keep numeric axes and draw every series."""
    url, proc = serve(mini_workspace, tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        page.get_by_label("DPO", exact=True).check()
        page.get_by_label("Base model").fill(str(tiny_model))
        page.get_by_role("spinbutton", name="Max steps").fill("2")
        page.get_by_role("spinbutton", name="Batch size").fill("2")
        page.get_by_role("spinbutton", name="Max tokens").fill("128")
        page.get_by_role("button", name="Start training").click()
        page.locator("#train-started").get_by_text("Run 1 started.").wait_for(timeout=120_000)
        page.locator("#train-summary").get_by_text("succeeded").wait_for(timeout=240_000)
        # The 2 s timer draws the last step (on a busy machine, late): its x axis then has two ticks or more.
        page.wait_for_function("""() => Array.from(document.querySelectorAll(
            '#train-loss-plot g.mark-text.role-axis-label')[0]?.querySelectorAll('text') || [])
            .filter(t => t.textContent.trim()).length >= 2""", timeout=60_000)
        assert page.locator("#train-plotted").get_by_label("rewards/margins", exact=True).is_checked()
        assert page.locator("#train-plotted").get_by_label("accuracy", exact=True).count() == 0
        errors = [t for t in page.locator(".toast-body, .error").all_inner_texts() if t.strip()]
        assert not errors, errors
        # Watched from its first step, the plots keep numeric axes (no "null" tick) and draw every series.
        def ticks(axis: str) -> list[str]:  # the SVG axis labels Vega draws (x first, then y)
            texts = page.locator("#train-loss-plot g.mark-text.role-axis-label").nth(0 if axis == "x" else 1) \
                .locator("text").evaluate_all("els => els.map(e => e.textContent)")
            return [t for t in texts if t and t.strip()]

        for axis in ("x", "y"):
            values = sorted(float(t.replace(",", "")) for t in ticks(axis))  # numbers, every one of them
            steps = {round(b - a, 6) for a, b in zip(values, values[1:])}
            assert len(values) >= 2 and len(steps) == 1, (axis, values)  # a numeric scale: evenly spaced ticks
        legend = page.locator("#train-metrics-plot g.role-legend text").evaluate_all(
            "els => els.map(e => e.textContent)")
        from studio.methods import METHODS

        assert set(legend) - {"metric"} <= set(METHODS["dpo"].plotted_first)  # this plot's series, no others
        # Every series is drawn in its colour, the one that first appeared at the run's end (its
        # evaluation) too: the plot's colour scale was built with it.
        strokes = page.locator("#train-metrics-plot g.mark-line path").evaluate_all(
            "els => els.map(e => e.getAttribute('stroke'))")
        assert strokes and None not in strokes, strokes
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_train_tab_says_in_a_sentence_when_balancing_lengths_leaves_nothing_to_train_on(tmp_path, models_dir,
                                                                                       tiny_model, browser):
    """Every chosen answer is the longer one, and the user ticks 'Balance lengths': the run fails at
    once, and the Train tab says why and what to do, not a Python error."""
    rows = [{"chosen": f"\n\nHuman: question {i}?\n\nAssistant: a long and careful answer about {i}.",
             "rejected": f"\n\nHuman: question {i}?\n\nAssistant: No."} for i in range(6)]
    path = tmp_path / "longer.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    workspace = Workspace.at(tmp_path / "ws", models_dir=models_dir)
    with workspace.open_store() as store:
        import_file(store, path, "longer")
    url, proc = serve(workspace, tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        page.get_by_label("Base model").fill(str(tiny_model))
        page.get_by_role("spinbutton", name="Max steps").fill("2")
        page.get_by_role("spinbutton", name="Batch size").fill("2")
        page.get_by_text("All settings").click()
        page.get_by_label("Balance lengths").check()
        page.get_by_role("button", name="Start training").click()
        page.locator("#train-started").get_by_text("Run 1 started.").wait_for(timeout=120_000)
        summary = page.locator("#train-summary")
        summary.get_by_text("failed").wait_for(timeout=240_000)
        text = summary.inner_text()
        assert "every pair's chosen answer is the longer one: balancing lengths leaves nothing to train on" in text
        assert "Error" not in text and "Traceback" not in text
        # the run menu says so too, not "running" (the 2 s timer redraws it when a status changes)
        page.wait_for_function("() => document.querySelector('#train-run input')?.value === 'run 1 · rm · failed'",
                               timeout=60_000)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with workspace.open_store() as store:
        assert store.query("SELECT status FROM runs") == [{"status": "failed"}]
        assert store.query("SELECT name FROM models") == []


def test_train_tab_opens_on_the_newest_run_with_its_own_metrics(tmp_path, mini_workspace, browser):
    """The page opens on the newest run (a PPO one here) without a pick; its metric choices must be PPO's.
    A run picked then stays picked across a reload and in a second tab."""
    with mini_workspace.open_store() as store:
        with store.transaction() as cur:
            for kind, message in (("dpo", "DPO trained (2 steps)"), ("ppo", "PPO trained (3 iterations)")):
                cur.execute("INSERT INTO runs (kind, config, status, message) VALUES (?, '{\"base\": \"default\"}', "
                            "'succeeded', ?)", [kind, message])
            for step in (1, 2, 3):
                for name, value in (("reward", 0.1 * step), ("kl", 0.2 * step), ("ended", 0.3),
                                    ("policy_loss", -0.01), ("value_loss", 0.1)):
                    cur.execute("INSERT INTO run_metrics (run_id, step, name, value) VALUES (2, ?, ?, ?)",
                                [step, name, value])
    url, proc = serve(mini_workspace, tmp_path / "serve.log")
    try:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()  # a context: two tabs
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-summary").get_by_text("PPO trained (3 iterations)").wait_for(timeout=30_000)
        wait_for_lines(page, "#train-metrics-plot", {"reward", "kl"})
        plotted = page.locator("#train-plotted")
        assert plotted.get_by_label("reward", exact=True).is_checked()
        assert not plotted.get_by_label("ended", exact=True).is_checked()
        assert plotted.get_by_label("accuracy", exact=True).count() == 0
        plotted.get_by_label("ended", exact=True).check()
        wait_for_lines(page, "#train-metrics-plot", {"reward", "kl", "ended"})

        # The run a user picks stays picked across a reload and in a second tab of the same browser.
        page.locator("#train-run").get_by_role("combobox").click()
        page.get_by_role("option", name="run 1 · dpo · succeeded").click()
        page.locator("#train-summary").get_by_text("DPO trained (2 steps)").wait_for(timeout=30_000)
        page.reload()
        for view in (page, page.context.new_page()):
            if view is not page:
                view.goto(url)
            view.get_by_role("tab", name="Train").click()
            view.locator("#train-summary").get_by_text("DPO trained (2 steps)").wait_for(timeout=30_000)
            assert view.locator("#train-run input").input_value().startswith("run 1 · dpo")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_compare_streams_two_answers_and_a_blind_vote_lands_as_a_labelled_pair(tmp_path, mini_workspace, browser,
                                                                               tiny_model):
    from pipelines.export import convert
    from pipelines.models import default_gguf_path

    tiny_gguf = tmp_path / "tiny.gguf"
    convert(tiny_model, tiny_gguf)  # a second, different model (random weights: it answers nonsense)
    with mini_workspace.open_store() as store:  # and a second name for the default's GGUF: the same model
        with store.transaction() as cur:
            cur.execute("INSERT INTO models (name, kind, path, purpose) VALUES ('twin', 'gguf', ?, 'policy')",
                        [str(default_gguf_path())])
            cur.execute("INSERT INTO models (name, kind, path, purpose) VALUES ('tiny', 'gguf', ?, 'policy')",
                        [str(tiny_gguf)])
    url, proc = serve(mini_workspace, tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.get_by_role("tab", name="Compare").click()
        # Out of the box, two different models face each other.
        a, b = (page.locator(f"#compare-model-{side} input").input_value() for side in ("a", "b"))
        assert a != b
        page.get_by_text("Sampling (the same for both)").click()
        page.get_by_role("spinbutton", name="Max answer tokens").fill("24")
        # Voting before any message, and on two identical answers, stores nothing and loses nothing.
        page.locator("#vote-left").click()
        page.get_by_text("Send a message first").wait_for(timeout=60_000)  # a busy machine answers late
        for side, name in (("A", "default"), ("B", "twin")):
            page.get_by_role("combobox", name=f"Model {side}").click()
            page.locator(f"#compare-model-{side.lower()}").get_by_role("option", name=name, exact=True).click()
        page.locator("#compare-input textarea").fill("Say hello.")
        page.locator("#compare-send").click()
        page.get_by_text("Vote below, or send another message").wait_for(timeout=120_000)
        page.locator("#vote-left").click()
        page.get_by_text("the two answers are the same").wait_for(timeout=60_000)
        assert page.locator("#compare-left .message-row").count() == 2
        page.get_by_role("combobox", name="Model B").click()
        page.locator("#compare-model-b").get_by_role("option", name="tiny", exact=True).click()
        page.get_by_label("Blind arena").check()
        page.locator("#compare-input textarea").fill("Name three colours.")
        page.locator("#compare-send").click()
        page.get_by_text("Vote below, or send another message").wait_for(timeout=120_000)
        for side in ("left", "right"):
            bubbles = page.locator(f"#compare-{side} .message-row")
            assert bubbles.count() == 2 and len(bubbles.last.inner_text().strip()) > 3
        # A second message continues both conversations.
        page.locator("#compare-input textarea").fill("And one more?")
        page.locator("#compare-send").click()
        page.get_by_text("Both models are answering").wait_for(timeout=30_000)
        page.get_by_text("Vote below, or send another message").wait_for(timeout=120_000)
        for side in ("left", "right"):
            assert page.locator(f"#compare-{side} .message-row").count() == 4
        assert "hidden until you vote" in page.inner_text("#compare-left")
        page.screenshot(path=str(tmp_path / "compare.png"), full_page=True)
        page.locator("#vote-left").click()
        page.get_by_text("Vote stored").wait_for(timeout=30_000)
        status = page.inner_text("#compare-status")
        board = " ".join(page.inner_text("#leaderboard").split())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with mini_workspace.open_store() as store:
        row = store.query("""SELECT p.first_model, p.second_model, l.verdict, l.annotator, pr.messages AS prompt,
                                    a.messages AS answer FROM labels l JOIN pairs p ON p.id = l.pair_id
                             JOIN prompts pr ON pr.id = p.prompt_id JOIN responses a ON a.id = p.first_id""")
        assert len(row) == 1 and row[0]["verdict"] == "first" and row[0]["annotator"] == "arena"
        assert [m["role"] for m in json.loads(row[0]["prompt"])] == ["user"]
        assert [m["role"] for m in json.loads(row[0]["answer"])] == ["assistant", "user", "assistant"]
        assert {row[0]["first_model"], row[0]["second_model"]} == {"default", "tiny"}
        assert f"Left was {row[0]['first_model']}" in status
    # One battle: Bradley-Terry (with its small prior) 1131 vs 869, too few battles to rank; Elo 1016 vs 984.
    assert f"{row[0]['first_model']} 1131 (" in board and f"{row[0]['second_model']} 869 (" in board
    assert "not settled 1 1 0 0 0 1016" in board and "not settled 1 0 1 0 0 984" in board


def test_the_guided_run_on_the_home_tab_runs_every_stage_and_reports_it(tmp_path, tiny_model, models_dir, browser):
    workspace = Workspace.at(tmp_path / "ws", models_dir=models_dir)
    url, proc = serve(workspace, tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_text("Guided run: from demo prompts to an aligned GGUF model").click()
        page.locator("#guided-base textarea").fill(str(tiny_model))
        for field, value in (("prompts", "4"), ("tokens", "12"), ("rm-steps", "2"), ("dpo-steps", "2")):
            page.locator(f"#guided-{field} input").fill(value)
        page.get_by_role("button", name="Run the whole loop unattended").click()
        report = page.locator("#guided-report")
        report.get_by_text("Done in").wait_for(timeout=600_000)
        text = report.inner_text()
        for stage in ("prompts", "candidates", "perplexity", "filter", "labels", "reward model", "dpo", "evaluate",
                      "export", "compare"):
            assert f"{stage} (" in text, text
        assert "Open the Compare tab" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with workspace.open_store() as store:
        assert store.query("SELECT kind FROM runs WHERE status <> 'succeeded'") == []
        assert store.scalar("SELECT count(*) FROM models WHERE kind = 'gguf'") == 1
        assert store.scalar("SELECT count(*) FROM labels WHERE annotator = 'heuristic'") == 12


# Buttons the walk leaves alone: each starts real work even on an empty workspace (the guided runs
# loads the demo prompts itself; Export has the default model picked), and the upload area opens a
# file chooser.
# "Next step" leaves the tab (it has its own test); a disabled button has nothing to act on.
WALK_SKIPS = ("Run the whole loop unattended", "Prepare pairs to label", "Export", "Drop File Here", "Next step")


def settle(page) -> None:
    """Wait until the page's events are answered (no progress shown), however busy the machine is."""
    page.wait_for_timeout(150)  # the click's event on its way
    page.wait_for_function("() => !document.querySelector('.progress-text')", timeout=120_000)


def click_every_button(page, tab: str) -> list[str]:
    """Open the tab and its accordions, click each button on it; the internal errors seen, by button."""
    page.get_by_role("tab", name=tab, exact=True).click()
    page.wait_for_timeout(500)
    for accordion in page.locator("button.label-wrap:visible").all():
        if "open" not in (accordion.get_attribute("class") or ""):
            accordion.click()
    found = []
    # The buttons as they are now (a click may add or hide some: a toast's close button, a pane), read
    # in one call: asking the page about each of the hundreds of buttons (most on hidden tabs) one by
    # one took most of this test's time.
    buttons = page.query_selector_all("button:not([role=tab]):not([tabindex='-1']):not(.label-wrap)")
    shown = page.evaluate("(buttons) => buttons.map(b => [b.innerText, b.checkVisibility(), b.disabled])", buttons)
    for button, (text, visible, disabled) in zip(buttons, shown):
        name = " ".join(text.split())
        if not visible or disabled or not name or name.startswith(WALK_SKIPS) or name in ("↺", "Clear", "×") or \
                not button.is_visible():  # hidden by an earlier click
            continue
        page.once("dialog", lambda dialog: dialog.dismiss())
        button.click(timeout=60_000)
        settle(page)
        found += [f"{tab} / {name}: {error}" for error in internal_errors(page)]
        for close in page.locator(".toast-close:visible").all():
            close.click()
    return found


def test_every_button_with_empty_or_wrong_inputs_answers_in_words(tmp_path, models_dir, browser):
    workspace = Workspace.at(tmp_path / "ws", models_dir=models_dir)
    workspace.open_store().close()
    url, proc = serve(workspace, tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(url)
        page.wait_for_selector("[data-stat=pairs]", timeout=60_000)
        tabs = [t.inner_text() for t in page.get_by_role("tab").all()]
        assert len(tabs) == 8
        found = []
        for tab in tabs:  # empty inputs: nothing is picked or typed on a fresh workspace
            found += click_every_button(page, tab)
        for tab in tabs:  # wrong inputs: nonsense in every text field, -3 in every number
            page.get_by_role("tab", name=tab, exact=True).click()
            for field in page.locator("textarea:visible, input[type=text]:visible").all():
                if field.is_editable():
                    field.fill("../no such thing\t")
            for number in page.get_by_role("spinbutton").filter(visible=True).all():
                number.fill("-3")
            found += click_every_button(page, tab)
        page.screenshot(path=str(tmp_path / "walk.png"), full_page=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert found == []
    with workspace.open_store() as store:  # and nothing was started or written by a wrong click
        assert store.stats()["runs"] == 0 and store.stats()["datasets"] == 0


def test_enter_in_the_name_then_a_key_labels_the_pair_and_a_new_name_asks_first(tmp_path, mini_workspace, browser):
    url, proc = serve(mini_workspace, tmp_path / "serve.log")
    try:
        page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
        page.goto(url)
        page.get_by_role("tab", name="Label").click()
        page.get_by_role("combobox", name="Dataset").first.click()
        page.get_by_role("option", name="mini", exact=True).click()
        page.get_by_label("Annotator").fill("alice")
        page.get_by_label("Annotator").press("Enter")
        page.get_by_text("alice: 0 of 5").wait_for(timeout=30_000)
        page.keyboard.press("1")  # the focus was in the name: the key still answers the pair
        page.get_by_text("Saved: left is better. alice: 1 of 5").wait_for(timeout=30_000)
        assert (
            page.get_by_label("Annotator").input_value() == "alice" and not page.get_by_label("Annotator").is_editable()
        )
        page.once("dialog", lambda dialog: dialog.dismiss())  # "Label under another name?" No.
        page.get_by_role("button", name="Change annotator").click()
        page.wait_for_timeout(1_000)
        assert not page.get_by_label("Annotator").is_editable()
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Change annotator").click()
        page.get_by_text("Type the new name and start again").wait_for(timeout=30_000)
        assert page.get_by_label("Annotator").is_editable()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with mini_workspace.open_store() as store:
        assert store.query("SELECT annotator, count(*) AS n FROM labels GROUP BY 1") == [{"annotator": "alice", "n": 1}]


def next_step(page, label: str, stage: str, tab: str) -> None:
    """On Home: wait until the map marks `stage` next and the button says `label`, press it, and
    wait for `tab` to open."""
    page.get_by_role("tab", name="Home").click()
    page.locator("#home-map").get_by_text(stage, exact=True).wait_for(timeout=60_000)
    page.get_by_role("button", name=f"Next step: {label}").wait_for(timeout=60_000)
    assert f"→ {stage}" in " ".join(page.inner_text("#home-map").split()), page.inner_text("#home-map")
    page.get_by_role("button", name=f"Next step: {label}").click()
    page.get_by_role("tab", name=tab, exact=True, selected=True).wait_for(timeout=30_000)
    page.wait_for_timeout(1_000)  # the inputs the step chose arrive with the tab


def picked(page, label: str) -> str:
    """The value shown by the dropdown labelled `label` in the visible tab."""
    return page.get_by_role("combobox", name=label).filter(visible=True).first.input_value()


def train_run(page, tiny_model: Path, run_id: int) -> None:
    """In the Train tab opened by a next step (method and pairs chosen): a short run on the tiny model."""
    page.get_by_label("Base model").fill(str(tiny_model))
    page.get_by_role("spinbutton", name="Max steps").fill("2")
    page.get_by_role("spinbutton", name="Batch size").fill("2")
    page.get_by_role("spinbutton", name="Max tokens").fill("128")
    page.get_by_role("button", name="Start training").click()
    page.locator("#train-started").get_by_text(f"Run {run_id} started.").wait_for(timeout=120_000)
    page.locator("#train-summary").get_by_text("succeeded").wait_for(timeout=300_000)


def test_a_newcomer_goes_from_an_empty_workspace_to_an_exported_model_by_the_next_step_alone(
        tmp_path, models_dir, tiny_model, browser):
    """Only Home's "Next step" says where to go: every stage of the map is shown as it stands, and
    each step opens the tab that takes it with its inputs chosen; the user fills in what only they
    know (the file, the model, the sizes, their labels) and presses the tab's one button."""
    workspace = Workspace.at(tmp_path / "ws", models_dir=models_dir)
    workspace.open_store().close()
    prompts = tmp_path / "questions.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in (
        "What is the capital of France?", "Name a colour.", "How many legs has a cat?", "What is 2 + 2?",
        "Say hello.", "What do bees make?")))
    url, proc = serve(workspace, tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("button", name="Next step: Import prompts or pairs").click()
        page.locator("#import-file input[type=file]").set_input_files(str(prompts))
        page.get_by_role("button", name="Import", exact=True).click()
        page.locator("#import-result").get_by_text("imported 6 prompts").wait_for(timeout=30_000)

        # Home picks the new dataset by itself; its next step opens Build with generation unfolded.
        next_step(page, "Generate candidates", "candidates", "Build dataset")
        assert picked(page, "Dataset") == "questions"
        page.locator("#build-gen-model textarea").fill(str(tiny_model))
        page.get_by_label("Answers per prompt").fill("3")
        page.get_by_label("Max tokens").fill("16")
        page.locator("#build-generate").click()
        page.locator("#build-job").get_by_text("succeeded").wait_for(timeout=300_000)

        next_step(page, "Score perplexity", "perplexity", "Build dataset")
        page.get_by_label("Target model").fill(str(tiny_model))
        page.get_by_role("button", name="Score perplexity").click()
        page.locator("#build-job").get_by_text("perplexity").wait_for(timeout=30_000)
        page.locator("#build-job").get_by_text("succeeded").wait_for(timeout=300_000)

        next_step(page, "Filter into pairs", "pairs", "Build dataset")
        page.locator("#filter-counts").get_by_text("Keeps").wait_for(timeout=60_000)
        page.get_by_label("New dataset name").fill("question-pairs")
        page.get_by_role("button", name="Save filtered dataset").click()
        page.get_by_text("Saved: 'question-pairs'").wait_for(timeout=30_000)

        next_step(page, "Label the pairs", "labels", "Label")
        assert picked(page, "Dataset") == "question-pairs"
        page.get_by_label("Annotator").fill("newcomer")
        page.get_by_role("button", name="Start labelling").click()
        page.get_by_text("newcomer: 0 of").wait_for(timeout=30_000)
        labelled = 0
        while shown_pair(page) is not None:
            press_and_wait(page, "1" if labelled % 2 else "2", "newcomer", labelled + 1)
            labelled += 1
        assert labelled >= 4

        next_step(page, "Train a reward model", "reward model", "Train")
        assert page.get_by_role("radio", name="Reward model").is_checked()
        assert picked(page, "Pairs") == "question-pairs"
        train_run(page, tiny_model, 3)

        next_step(page, "Train a policy (DPO)", "policy", "Train")
        assert page.get_by_role("radio", name="DPO").is_checked()
        assert picked(page, "Pairs") == "question-pairs"
        train_run(page, tiny_model, 4)

        next_step(page, "Judge the policy", "verdict", "Train")
        # The evaluation form, a screen below the top, is scrolled to; every dataset here holds the prompts
        # the policy trained on, so it offers those and says so; the policy's proxy of its pairs beside.
        assert picked(page, "Run").startswith("run 4 · dpo") and picked(page, "Held-out prompts") == "question-pairs"
        page.wait_for_function("() => Math.abs(document.getElementById('train-eval-box').getBoundingClientRect().top)"
                               " < 200", timeout=30_000)
        assert picked(page, "Proxy of the pairs (SFT, DPO, KTO, ORPO)").startswith("rm-run3")
        page.get_by_role("combobox", name="Judge by a rule").click()
        page.get_by_role("option").nth(1).click()
        page.get_by_role("button", name="Evaluate the picked run").click()
        page.locator("#train-eval-said").get_by_text("Run 5 started: evaluating run 4").wait_for(timeout=60_000)
        # The evaluation is followed in Runs; once done, its verdicts and its cost card are there.
        summary = page.locator("#train-summary")
        summary.get_by_text("What it cost").wait_for(timeout=600_000)
        assert "refuses harmless prompts that sound risky: base" in summary.inner_text()
        assert "rule 'heuristic': policy wins" in summary.inner_text()

        next_step(page, "Export the policy", "export", "Export")  # the map waits for the verdict
        page.locator("#export-start").click()
        page.locator("#export-status").get_by_text("succeeded").wait_for(timeout=600_000)

        next_step(page, "Compare it blind", "votes", "Compare")
        # The menu names the file and what its quantisation cost against f16.
        assert picked(page, "Model B").startswith("dpo-run4-q4_k_m · ")
        assert page.get_by_label("Blind arena").is_checked()
        page.get_by_role("tab", name="Home").click()
        home = " ".join(page.inner_text("#home-map").split())
        for stage in ("prompts", "candidates", "perplexity", "pairs", "labels", "policy", "verdict", "export"):
            assert f"✓ {stage}" in home, home
        # A reward model trained on a dozen labels is not clearly better than chance on its held-out pairs: the
        # map says so, and what to do, rather than showing a check mark.
        assert "! reward model" in home and "not clearly better than chance" in home and "label more pairs" in home
        assert f"{labelled} pairs with a preference; labels by newcomer {labelled}" in home
        page.screenshot(path=str(tmp_path / "newcomer-home.png"), full_page=True)
        # The lineage below the map: a click on the policy's exports opens the Export tab on it.
        page.locator("#home-lineage").get_by_text("dpo-run4-f16, dpo-run4-q8_0").filter(visible=True).first.click()
        page.get_by_role("tab", name="Export", exact=True, selected=True).wait_for(timeout=30_000)
        page.wait_for_timeout(1_000)
        assert picked(page, "Model to export") == "dpo-run4"

        # The next round, from Home: it starts from the policy with its reward model; every dataset holds
        # the prompts the policy trained on, so the held-out prompts are left to the user, and said.
        page.get_by_role("tab", name="Home").click()
        box = page.locator("#rounds-box")
        box.get_by_text("Next round: the policy answers").click()
        box.get_by_role("combobox", name="Start from").wait_for(timeout=30_000)
        page.wait_for_function("() => document.querySelector('#rounds-box input[aria-label=\"Start from\"]')"
                               "?.value === 'dpo-run4'", timeout=30_000)
        assert box.get_by_role("combobox", name="Reward model", exact=True).input_value() == "rm-run3"
        box.locator("#rounds-start").click()
        page.locator("#rounds-said").get_by_text("Pick the policy, the prompts it answers").wait_for(timeout=30_000)
        box.get_by_role("combobox", name="Judged on").click()
        page.get_by_role("option", name="questions", exact=True).click()
        box.get_by_label("Answers per prompt").fill("2")
        box.get_by_label("Max answer tokens").fill("8")
        box.locator("#rounds-start").click()
        page.locator("#rounds-log").get_by_text("kept: ").wait_for(timeout=600_000)
        log = page.inner_text("#rounds-log")
        assert "round 1: dpo-run4 answers each prompt of 'question-pairs' 2 times" in log, log
        assert re.search(r"round 1: dpo-run\d+ from dpo-run4 on \d+ pairs; against the previous policy the judge", log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with workspace.open_store() as store:
        runs = store.query("SELECT kind, status FROM runs ORDER BY id")
        assert [r["kind"] for r in runs] == ["generate", "perplexity", "rm", "dpo", "evaluate", "export", "generate",
                                             "reward-scoring", "dpo", "evaluate"]
        assert {r["status"] for r in runs} == {"succeeded"}


@pytest.mark.default_model
def test_labelling_with_an_ai_judge_from_the_label_tab_and_its_disagreements(tmp_path, mini_workspace, browser):
    from store.labelling import judge_disagreements

    url, proc = serve(mini_workspace, tmp_path / "serve.log")
    try:
        page = open_label_tab(browser, url, "alice")
        page.keyboard.press("1")  # a person's label, which the judge's never replaces
        page.get_by_text("alice: 1 of").wait_for(timeout=30_000)
        page.get_by_text("Label with an AI judge").click()
        page.get_by_role("button", name="Label with the judge").click()
        page.get_by_text(re.compile(r"Run \d+ started: judge:SmolLM2-135M-Instruct.Q4_1.gguf is labelling 'mini'")) \
            .wait_for(timeout=30_000)
        home = browser.new_page(viewport={"width": 1280, "height": 800})
        home.goto(url)  # the Home tab's runs table follows the job live (the workspace's only run)
        home.wait_for_selector("#runs-table", timeout=60_000)
        deadline = time.time() + 240
        while "judge-labels succeeded" not in " ".join(home.inner_text("#runs-table").split()):
            assert time.time() < deadline, home.inner_text("#runs-table")
            time.sleep(1)
        page.get_by_role("button", name="List disagreements").click()
        listed = page.get_by_text(
            re.compile(r"(No pair of 'mini' where an AI judge|\d+ pairs of 'mini' where an AI judge)")
        )
        listed.wait_for(timeout=30_000)
        shown = listed.inner_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with mini_workspace.open_store() as store:
        judge = "judge:SmolLM2-135M-Instruct.Q4_1.gguf"
        assert store.scalar("SELECT count(*) FROM labels WHERE annotator = 'alice'") == 1
        assert 0 < store.scalar("SELECT count(*) FROM labels WHERE annotator = ?", [judge]) <= 5
        disagreeing = judge_disagreements(store, "mini")
    assert shown.startswith(f"{len(disagreeing)} pairs" if disagreeing else "No pair")


def test_a_team_labels_at_once_each_under_their_login_and_the_agreement_counts_both(tmp_path, mini_workspace,
                                                                                    browser):
    url, proc = serve(mini_workspace, tmp_path / "serve.log", "--auth", "alice:apple-pie", "--auth", "bob:blue-sky")
    try:
        pages = {}
        for user, password in (("alice", "apple-pie"), ("bob", "blue-sky")):
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.goto(url)
            page.get_by_label("username").fill(user)
            page.get_by_label("password").fill(password)
            page.get_by_role("button", name="Login").click()
            page.get_by_role("tab", name="Label").click()
            name = page.get_by_label("Annotator (your login)")
            name.wait_for(timeout=60_000)
            assert name.input_value() == user and not name.is_editable()  # no name to type: the login is it
            page.get_by_role("button", name="Start labelling").click()
            page.get_by_text(f"{user}: 0 of").wait_for(timeout=30_000)
            pages[user] = page
        # Both label every pair, taking turns: the same pair is never held by both at once.
        for n in range(1, 6):
            for user, key in (("alice", "1"), ("bob", "2" if n % 2 else "1")):
                pages[user].keyboard.press(key)
                pages[user].get_by_text(f"{user}: {n} of").wait_for(timeout=30_000)
        page = pages["bob"]  # each one sees the agreement of both
        page.get_by_role("tab", name="Agreement").click()
        page.get_by_role("combobox", name="Dataset").last.click()
        page.get_by_role("option", name="mini", exact=True).last.click()
        page.get_by_text("'mini': 2 annotators (alice, bob)").wait_for(timeout=30_000)
        assert "alice bob 5" in " ".join(page.inner_text("#agreement-table").split())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with mini_workspace.open_store() as store:
        from store.labelling import agreement

        counts = {r["annotator"]: r["n"] for r in store.query(
            "SELECT annotator, count(*) AS n FROM labels GROUP BY annotator")}
        assert counts == {"alice": 5, "bob": 5}  # no label lost, each under its login
        pairs = {(r["a"], r["b"]): r for r in agreement(store, "mini")["pairs"]}
    both = pairs.get(("alice", "bob")) or pairs.get(("bob", "alice"))
    assert both and both["pairs"] == 5


def test_train_tab_says_when_a_base_cannot_be_exported_as_the_run_starts(tmp_path, mini_workspace, models_dir,
                                                                         default_model_path, browser):
    import shutil

    from families import family_model

    base = tmp_path / "gemma2-without-sentencepiece"  # as save_pretrained of transformers 5 leaves a Gemma-2
    shutil.copytree(family_model("gemma2", models_dir, default_model_path), base)
    (base / "tokenizer.model").unlink()
    url, proc = serve(mini_workspace, tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        page.get_by_label("DPO", exact=True).check()
        page.get_by_label("Base model").fill(str(base))
        page.get_by_role("spinbutton", name="Max steps").fill("1")
        page.get_by_role("button", name="Start training").click()
        page.locator("#train-started").get_by_text("Run 1 started.").wait_for(timeout=60_000)
        note = page.locator("#train-started").get_by_text("Note: This base can be trained but not exported to GGUF")
        note.wait_for(timeout=120_000)
        assert "tokenizer.model" in page.inner_text("#train-started")
        page.screenshot(path=str(tmp_path / "train-note.png"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_under_logins_a_compare_vote_carries_the_login_and_teammates_votes_on_one_battle_both_stand(
        tmp_path, mini_workspace, browser, tiny_model):
    from pipelines.export import convert

    tiny_gguf = tmp_path / "tiny.gguf"
    convert(tiny_model, tiny_gguf)
    with mini_workspace.open_store() as store:
        with store.transaction() as cur:
            cur.execute("INSERT INTO models (name, kind, path, purpose) VALUES ('tiny', 'gguf', ?, 'policy')",
                        [str(tiny_gguf)])
    url, proc = serve(mini_workspace, tmp_path / "serve.log", "--auth", "alice:apple-pie", "--auth", "bob:blue-sky")
    try:
        for user, password in (("bob", "blue-sky"), ("alice", "apple-pie")):
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            page.goto(url)
            page.get_by_label("username").fill(user)
            page.get_by_label("password").fill(password)
            page.get_by_role("button", name="Login").click()
            page.get_by_role("tab", name="Compare").click()
            name = page.locator("#vote-annotator textarea, #vote-annotator input").first
            page.wait_for_function("u => { const e = document.querySelector('#vote-annotator textarea, "
                                   "#vote-annotator input'); return e && e.value === u; }", arg=user, timeout=60_000)
            assert not name.is_editable()  # the login is the voter: no name to type
            for side, model in (("a", "default"), ("b", "tiny")):
                page.locator(f"#compare-model-{side}").get_by_role("combobox").click()
                page.locator(f"#compare-model-{side}").get_by_role("option", name=model, exact=True).click()
            page.get_by_text("Sampling (the same for both)").click()
            # The number is committed when it loses the focus: a busy machine's page could take the
            # Send before it (CI: alice's answers ran to 256 tokens, another battle than bob's).
            page.get_by_role("spinbutton", name="Max answer tokens").fill("12")
            page.get_by_role("spinbutton", name="Max answer tokens").press("Tab")
            page.wait_for_timeout(500)
            page.locator("#compare-input textarea").fill("Say hello.")
            page.locator("#compare-send").click()
            page.get_by_text("Vote below, or send another message").wait_for(timeout=120_000)
            page.locator("#vote-left" if user == "bob" else "#vote-right").click()
            page.get_by_text("Vote stored").wait_for(timeout=30_000)
            page.context.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with mini_workspace.open_store() as store:
        votes = store.query("SELECT l.annotator, l.verdict, l.pair_id FROM labels l ORDER BY l.id")
    assert [(v["annotator"], v["verdict"]) for v in votes] == [("bob", "first"), ("alice", "second")]
    assert votes[0]["pair_id"] == votes[1]["pair_id"]  # the same battle: alice's vote did not replace bob's


def test_train_tab_fine_tunes_a_base_without_a_chat_template_once_a_format_is_picked(tmp_path, mini_workspace,
                                                                                    tiny_model, browser):
    """SFT in the Train tab on demonstrations: a base without a chat template is refused in a
    sentence naming the next step (no run made); with a chat format picked it trains."""
    import shutil

    base = tmp_path / "tiny-base"
    shutil.copytree(tiny_model, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps({"prompt": f"Say {w}.", "completion": f"{w.capitalize()}."}) + "\n"
                             for w in ("yes", "no", "maybe", "soon")))
    with mini_workspace.open_store() as store:
        import_file(store, demos, "demos")
    url, proc = serve(mini_workspace, tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        page.get_by_label("SFT", exact=True).check()
        page.get_by_text("or of demonstrations").wait_for(timeout=30_000)
        page.get_by_role("combobox", name="Pairs or demonstrations").click()
        page.get_by_role("option", name="demos", exact=True).click()
        page.get_by_label("Base model").fill(str(base))
        page.get_by_role("spinbutton", name="Max steps").fill("2")
        page.get_by_role("spinbutton", name="Max tokens").fill("128")
        page.get_by_role("button", name="Start training").click()
        said = page.locator("#train-started")
        said.get_by_text("has no chat template").wait_for(timeout=120_000)  # checks the base: seconds, more when busy
        assert "--chat-format chatml" in said.inner_text()
        page.locator("#train-chat-format").get_by_role("combobox").click()
        page.get_by_role("option", name="chatml", exact=True).click()
        page.get_by_role("button", name="Start training").click()
        said.get_by_text("Run 1 started.").wait_for(timeout=120_000)
        page.locator("#train-summary").get_by_text("succeeded").wait_for(timeout=240_000)
        errors = [t for t in page.locator(".toast-body, .error").all_inner_texts() if t.strip()]
        assert not errors, errors
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with mini_workspace.open_store() as store:
        assert store.query("SELECT kind, status FROM runs") == [{"kind": "sft", "status": "succeeded"}]


def test_a_running_job_is_seen_from_every_tab_and_after_a_reload_and_opens_and_cancels_from_there(
        tmp_path, mini_workspace, tiny_model, browser):
    with mini_workspace.open_store() as store:
        runner = Runner(store, mini_workspace)
        run_id = service.start_training(runner, "dpo", "mini", base=str(tiny_model), max_steps=400, batch_size=2,
                                        max_length=128, lora_r=4, lora_alpha=8, save_every=1000).run_id
    url, proc = serve(mini_workspace, tmp_path / "serve.log")
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.get_by_role("tab", name="Label").click()
        bar = page.locator("#jobs-bar-text")
        bar.get_by_text(f"run {run_id} training DPO on 'mini'").wait_for(timeout=60_000)
        page.reload()  # a reload (or another browser tab) finds the same job
        page.get_by_role("tab", name="Compare").click()
        bar.get_by_text(f"run {run_id} training DPO").wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "jobs-bar.png"))
        page.locator("#jobs-bar-open").click()  # Open takes it to the tab that follows it, picked there
        page.wait_for_function("id => document.querySelector('#train-run input')?.value.startsWith('run ' + id)",
                               arg=run_id, timeout=60_000)
        assert page.get_by_role("tab", name="Train").get_attribute("aria-selected") == "true"
        page.locator("#jobs-bar-cancel").click()
        page.locator("#jobs-bar-said").get_by_text(f"Run {run_id}: asked to stop").wait_for(timeout=30_000)
        page.locator("#jobs-bar").wait_for(state="hidden", timeout=120_000)  # nothing runs: the bar goes
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with mini_workspace.open_store() as store:
        assert store.scalar("SELECT status FROM runs WHERE id = ?", [run_id]) == "cancelled"

