"""Data tab: import a file, browse and search a dataset's pairs, open one in full, copy, move or
remove pairs, and export a dataset for download."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from common.errors import StudioError
from store import EXPORT_FORMATS, ExportError, ImportFailed, Store, export_pairs, import_file
from store.exports import demonstration_records
from store.pairs import (
    PAGE_SIZE,
    CurationError,
    copy_pairs,
    count_pairs,
    find_pairs,
    find_prompts,
    get_pair,
    remove_pairs,
)
from store.queries import dataset_names
from studio.context import Context, handler
from studio.rendering import SIDES_EXPLAINED, VERDICT_WORDS, as_chat, as_markdown, preview
from studio.workspace import Workspace

UPLOAD_TYPES = [".jsonl", ".json", ".csv", ".parquet", ".gz"]
PAIR_COLUMNS = ["#", "prompt (last turn)", "response A", "response B", "file verdict", "labels"]
SCOPES = ("This pair", "All pairs matching the search")
MAX_ERRORS_SHOWN = 20


def import_upload(store: Store, path: str | None, dataset: str, skip_bad: bool) -> str:
    """Import an uploaded file; the message names the file as the user knows it, not its temp path."""
    if not path:
        return "**Choose a file to import first.**"
    name = Path(path).name
    try:
        report = import_file(store, path, (dataset or "").strip() or None, skip_bad=skip_bad)
    except ImportFailed as e:
        report = e.report
    except StudioError as e:  # an unusable dataset name
        return f"**{e}**"
    errors = [f"{name}:{e.line}: {e.reason}" for e in report.errors]
    shown = "\n".join(f"- `{e}`" for e in errors[:MAX_ERRORS_SHOWN])
    more = f"\n- … and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
    summary = report.summary().replace(str(path), name)
    if not report.written:
        hint = "" if skip_bad or not errors else "\n\nFix these rows, or tick *Skip bad rows* to import the rest."
        return f"**{summary}**\n\n{shown}{more}{hint}"
    return summary + (f"\n\n{shown}{more}" if errors else "")


def page_window(total: int, page) -> tuple[int, int, int]:
    """The page actually shown (any number asked for is clamped), the page count, and the index
    of the page's first row."""
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(max(int(page or 1), 1), pages)
    return page, pages, (page - 1) * PAGE_SIZE


def pairs_page(store: Store, dataset: str | None, search: str, page: int) -> tuple[list[list], list[str], str, int]:
    """Table rows, their pair ids, a line saying what is shown, and the page actually shown."""
    if not dataset:
        return [], [], "Pick a dataset.", 1
    try:
        rows, total = find_pairs(store, dataset, search, page=int(page or 1))
        # No pairs at all (not only none matching): a dataset of prompts
        if not total and (not search.strip() or not count_pairs(store, dataset)):
            return prompts_page(store, dataset, search, page)
        page, pages, first = page_window(total, page)
        if not rows and total:  # a page past the last: the last one (a search's hits are kept, so cheap)
            rows, _ = find_pairs(store, dataset, search, page=page)
    except CurationError as e:
        return [], [], f"*{e}*", 1
    table = [[first + i + 1, preview(r["prompt"]), preview(r["first"]) or "(empty)", preview(r["second"]) or "(empty)",
              VERDICT_WORDS[r["source_verdict"]], r["labels"]] for i, r in enumerate(rows)]
    matching = f" matching '{search.strip()}'" if search.strip() else ""
    if not total:
        line = f"No pairs{matching} in '{dataset}'."
    else:
        line = (
            f"Pairs {first + 1:,}–{first + len(rows):,} of {total:,}{matching} in '{dataset}' (page {page} of {pages})."
        )
    return table, [r["id"] for r in rows], line, page


def prompts_page(store: Store, dataset: str, search: str, page: int) -> tuple[list[list], list[str], str, int]:
    """A dataset without pairs, listed by its prompts (and how many answers each has)."""
    _, total = find_prompts(store, dataset, search, page=1, page_size=1)
    page, pages, first = page_window(total, page)
    rows, _ = find_prompts(store, dataset, search, page=page)
    table = [[first + i + 1, preview(r["prompt"]), f"{r['answers']:,} answers" if r["answers"] else "no answers yet",
              "", "", 0] for i, r in enumerate(rows)]
    matching = f" matching '{search.strip()}'" if search.strip() else ""
    demonstrations = len(demonstration_records(store, dataset))
    hint = (f" It holds {demonstrations:,} demonstrations (prompts imported with their answers): fine-tune on them "
            "in the Train tab (SFT), or generate candidates in the Build dataset tab to make pairs." if demonstrations
            else " It has no pairs yet: generate candidate answers in the Build dataset tab, then score and filter "
            "them into pairs.")
    if not total:
        return [], [], f"No prompts{matching} in '{dataset}'.", 1
    return (table, [], f"Prompts {first + 1:,}–{first + len(rows):,} of {total:,}{matching} in '{dataset}' "
                       f"(page {page} of {pages}).{hint}", page)


def pair_details(store: Store, pair_id: str) -> tuple[list[dict], str, str, str]:
    pair = get_pair(store, pair_id)
    verdict = {"first": "the file prefers A", "second": "the file prefers B",
               None: "no verdict in the file"}[pair["source_verdict"]]
    labels = ", ".join(f"{lab['annotator']}: {VERDICT_WORDS[lab['verdict']]}" for lab in pair["labels"]) or "none yet"
    meta = (f"Pair `{pair['id']}` · {verdict} · labels: {labels} · in datasets: {', '.join(pair['datasets'])}"
            + (f" · from {pair['source']}" if pair["source"] else ""))
    first_title = "**Response A**" + (f" · {pair['first_model']}" if pair["first_model"] else "")
    second_title = "**Response B**" + (f" · {pair['second_model']}" if pair["second_model"] else "")
    return (as_chat(pair["prompt"]), meta, f"{first_title}\n\n{as_markdown(pair['first'])}",
            f"{second_title}\n\n{as_markdown(pair['second'])}")



def export_path(workspace: Workspace, dataset: str, fmt: str, suffix: str) -> Path:
    """Where the Data tab writes a dataset's export: always inside the workspace's exports folder,
    whatever the dataset is called, and one file per dataset: a name that had to be changed to
    be a file name ('../x' -> '_x', spaces, slashes) gets a short hash of itself, so that '../x' and
    'x' (or '_x') never share a file. Letters of any script are kept."""
    safe = re.sub(r"[^\w.-]+", "_", dataset).strip("_.") or "dataset"
    if safe != dataset:
        safe += "-" + hashlib.sha256(dataset.encode()).hexdigest()[:8]
    return workspace.exports_dir / f"{safe}-{fmt}{suffix if suffix in ('.jsonl', '.parquet') else '.jsonl'}"

# --- handlers ------------------------------------------------------------------------------------

def show(ctx: Context, dataset_name, search_text, page_number):
    """A page of the dataset's pairs matching the search: the table, its pair ids, the line above it,
    the page shown, and the open pair closed."""
    rows, pair_ids, line, page_shown = pairs_page(ctx.store, dataset_name, search_text or "", page_number)
    return rows, pair_ids, line, page_shown, gr.update(visible=False), None


def pick(ctx: Context, pair_ids, event: gr.SelectData):
    """Open the pair of the clicked row."""
    row = event.index[0]
    if row >= len(pair_ids):
        return gr.update(), None, gr.update(), gr.update(), gr.update(), gr.update()
    chat, meta_text, first_text, second_text = pair_details(ctx.store, pair_ids[row])
    return gr.update(visible=True), pair_ids[row], chat, meta_text, first_text, second_text


def run_import(ctx: Context, path, name, skip):
    message = import_upload(ctx.store, path, name, skip)
    choices = dataset_names(ctx.store)
    written = not message.startswith("**")
    picked = (name or "").strip() or (Path(path).name.split(".")[0] if path else None)
    picked_update = gr.update(choices=choices, value=picked) if written and picked in choices \
        else gr.update(choices=choices)
    # A file imported is taken off the upload control, so that a second click cannot import it again.
    return message, picked_update, None if written else gr.update()


def curate(ctx: Context, action, dataset_name, scope_name, target_name, search_text, pair_id):
    whole_search = scope_name == SCOPES[1]
    if not whole_search and not pair_id:
        return "**Open a pair first (click its row), or choose all pairs matching the search.**", gr.update()
    pair_ids = None if whole_search else [pair_id]
    search_text = (search_text or "") if whole_search else ""
    try:
        if action == "remove":
            n = remove_pairs(ctx.store, dataset_name, pair_ids, search_text)
            message = f"Removed {n:,} pairs from '{dataset_name}' (they stay in the store and in other datasets)."
        else:
            n = copy_pairs(ctx.store, dataset_name, target_name, pair_ids, search_text, move=action == "move")
            verb = "Moved" if action == "move" else "Copied"
            message = f"{verb} {n:,} pairs from '{dataset_name}' to '{target_name.strip()}'."
    except StudioError as e:  # nothing selected, a taken or unusable name
        return f"**{e}**", gr.update()
    return message, gr.update(choices=dataset_names(ctx.store))


def run_export(ctx: Context, dataset_name, fmt_name, suffix_name):
    if not dataset_name:
        return "**Pick a dataset.**", gr.update(visible=False)
    out = export_path(ctx.workspace, dataset_name, fmt_name, suffix_name)
    try:
        report = export_pairs(ctx.store, out, dataset_name, fmt_name)
    except ExportError as e:
        return f"**{e}**", gr.update(visible=False)
    return report.summary().replace(str(out), out.name) + ".", gr.update(value=str(out), visible=True)


# --- layout --------------------------------------------------------------------------------------

def browse_panel(ctx: Context, ui: SimpleNamespace) -> None:
    """Import a file; a dataset's pairs, searched and paged; the pair opened."""
    names = dataset_names(ctx.store)
    gr.Markdown("Import preference pairs or prompts, browse and search them, copy, move or remove pairs, and export "
                "a dataset for TRL.")
    with gr.Row(equal_height=True):
        ui.upload = gr.File(label="Import a file", file_types=UPLOAD_TYPES, type="filepath", scale=2, height=120,
                            elem_id="import-file")
        with gr.Column(scale=1):
            ui.new_name = gr.Textbox(label="Into dataset", placeholder="default: the file's name")
            ui.skip_bad = gr.Checkbox(False, label="Skip bad rows", info="import the good rows, list the bad")
            ui.do_import = gr.Button("Import", variant="primary")
    ui.import_result = gr.Markdown(elem_id="import-result")
    with gr.Row():
        ui.dataset = gr.Dropdown(names, value=names[0] if names else None, label="Dataset", scale=2)
        ui.search = gr.Textbox(label="Search", scale=3,
                               placeholder='words or "a phrase" of a prompt or a response, or a pair id; Enter')
        ui.page = gr.Number(1, label="Page", precision=0, scale=1)  # any number: the list clamps it
        with gr.Column(scale=1, min_width=120):
            ui.previous = gr.Button("◀ Previous", size="sm")
            ui.following = gr.Button("Next ▶", size="sm")
    ui.shown = gr.Markdown(elem_id="pairs-shown")
    gr.Markdown(SIDES_EXPLAINED)
    ui.table = gr.Dataframe(headers=PAIR_COLUMNS, interactive=False, wrap=True, max_height=460,
                            elem_id="pairs-table", column_widths=["5%", "29%", "26%", "26%", "8%", "6%"])
    ui.ids = gr.State([])
    ui.selected = gr.State(None)
    with gr.Group(visible=False) as ui.details:
        ui.meta = gr.Markdown(elem_id="pair-meta")
        ui.prompt = gr.Chatbot(label="Prompt", height=320, elem_id="pair-prompt", buttons=["copy_all"])
        with gr.Row():
            ui.first = gr.Markdown(elem_id="pair-first", container=True)
            ui.second = gr.Markdown(elem_id="pair-second", container=True)


def curation_panels(ctx: Context, ui: SimpleNamespace) -> None:
    with gr.Accordion("Copy, move or remove pairs", open=False):
        with gr.Row(equal_height=True):
            ui.scope = gr.Radio(list(SCOPES), value=SCOPES[0], label="Which pairs", scale=2)
            ui.target = gr.Textbox(label="Target dataset", placeholder="existing or new name", scale=2)
            ui.copy = gr.Button("Copy", scale=1)
            ui.move = gr.Button("Move", scale=1)
            ui.remove = gr.Button("Remove from this dataset", variant="stop", scale=1)
        ui.curated = gr.Markdown()
    with gr.Accordion("Export this dataset", open=False):
        with gr.Row(equal_height=True):
            ui.fmt = gr.Dropdown(list(EXPORT_FORMATS), value=EXPORT_FORMATS[0], label="Format",
                                 info="conversational: message lists; trl: plain text")
            ui.suffix = gr.Radio([".jsonl", ".parquet"], value=".jsonl", label="File type")
            ui.do_export = gr.Button("Export")
        ui.exported = gr.Markdown()
        ui.download = gr.File(label="Download", visible=False)


def wire(ctx: Context, app: gr.Blocks, tab: gr.Tab, ui: SimpleNamespace) -> None:
    listing = [ui.table, ui.ids, ui.shown, ui.page, ui.details, ui.selected]
    where = [ui.dataset, ui.search, ui.page]
    shown = handler(show, ctx)
    ui.do_import.click(handler(run_import, ctx), [ui.upload, ui.new_name, ui.skip_bad],
                       [ui.import_result, ui.dataset, ui.upload]).then(shown, where, listing)
    ui.dataset.change(lambda d: show(ctx, d, "", 1), ui.dataset, listing).then(lambda: "", outputs=ui.search)
    ui.search.submit(lambda d, s: show(ctx, d, s, 1), [ui.dataset, ui.search], listing)
    ui.page.submit(shown, where, listing)
    ui.previous.click(lambda d, s, p: show(ctx, d, s, (p or 1) - 1), where, listing)
    ui.following.click(lambda d, s, p: show(ctx, d, s, (p or 1) + 1), where, listing)
    ui.table.select(handler(pick, ctx), ui.ids, [ui.details, ui.selected, ui.prompt, ui.meta, ui.first, ui.second])
    for action, button in (("copy", ui.copy), ("move", ui.move), ("remove", ui.remove)):
        button.click(handler(curate, ctx, action), [ui.dataset, ui.scope, ui.target, ui.search, ui.selected],
                     [ui.curated, ui.dataset]).then(shown, where, listing)
    ui.do_export.click(handler(run_export, ctx), [ui.dataset, ui.fmt, ui.suffix], [ui.exported, ui.download])
    app.load(shown, where, listing)
    # Opening the tab shows datasets and labels made elsewhere since.
    tab.select(lambda: gr.update(choices=dataset_names(ctx.store)), outputs=ui.dataset).then(shown, where, listing)


def build(ctx: Context, app: gr.Blocks, tab: gr.Tab) -> SimpleNamespace:
    ui = SimpleNamespace()
    browse_panel(ctx, ui)
    curation_panels(ctx, ui)
    wire(ctx, app, tab, ui)
    return ui
