"""Agreement tab: how far annotators (and the source file's verdicts) agree on a dataset, and the
pairs they disagree on."""

from __future__ import annotations

import gradio as gr

from store import Store
from store.labelling import SOURCE_ANNOTATOR, LabelError, agreement
from store.pairs import get_pair
from store.queries import dataset_names
from studio.context import Context
from studio.rendering import SIDES_EXPLAINED, VERDICT_WORDS, preview

EXPLANATION = f"""
For every two annotators: the pairs both judged (skips left out), the share where they gave the
same verdict, and Cohen's kappa (agreement corrected for chance: 1 is perfect, 0 is what chance
gives; blank where it is undefined because both always gave one same verdict). `{SOURCE_ANNOTATOR}`
is the verdict a pair was imported with; against it only the share counts (an import lists the
preferred response first, so its verdict never varies and kappa would say nothing).

""" + SIDES_EXPLAINED
AGREEMENT_COLUMNS = ["annotator", "other annotator", "pairs both judged", "agreement", "Cohen's kappa"]
MAX_DISAGREEMENTS = 200


def agreement_tables(store: Store, dataset: str | None) -> tuple[str, list[list], list[list]]:
    if not dataset:
        return "Pick a dataset.", [], []
    try:
        report = agreement(store, dataset)
    except LabelError as e:
        return f"*{e}*", [], []
    rows = [[r["a"], r["b"], r["pairs"], f"{r['agreement']:.0%}", "" if r["kappa"] is None else f"{r['kappa']:.2f}"]
            for r in report["pairs"]]
    names = [n for n in report["annotators"] if n != SOURCE_ANNOTATOR]
    disagreements = []
    for d in report["disagreements"][:MAX_DISAGREEMENTS]:
        pair = get_pair(store, d["pair_id"])
        verdicts = ", ".join(
            f"{name}: {VERDICT_WORDS.get(verdict, verdict)}" for name, verdict in sorted(d["verdicts"].items())
        )
        disagreements.append([d["pair_id"], preview(pair["prompt"]), verdicts])
    if not rows:
        line = (f"'{dataset}': labelled by {', '.join(names)}; no pair has two verdicts yet." if names
                else f"'{dataset}': no labels yet.")
    else:
        line = (f"'{dataset}': {len(names)} annotator{'s' if len(names) != 1 else ''} ({', '.join(names)}); "
                f"{len(report['disagreements']):,} pairs with disagreeing verdicts.")
    return line, rows, disagreements


def build(ctx: Context, tab: gr.Tab) -> gr.Dropdown:
    store = ctx.store
    with_pairs = dataset_names(store, with_pairs=True)
    gr.Markdown("How far the annotators of a dataset agree (Cohen's kappa), and the pairs they disagree on.")
    with gr.Accordion("How agreement is counted", open=False):
        gr.Markdown(EXPLANATION)
    with gr.Row():
        dataset = gr.Dropdown(with_pairs, value=with_pairs[0] if with_pairs else None, label="Dataset", scale=3)
        refresh = gr.Button("Refresh", scale=1, size="sm")
    summary = gr.Markdown(elem_id="agreement-summary")
    table = gr.Dataframe(headers=AGREEMENT_COLUMNS, interactive=False, elem_id="agreement-table")
    disagreements = gr.Dataframe(headers=["pair", "prompt (last turn)", "verdicts"], interactive=False, wrap=True,
                                 label="Pairs with disagreeing verdicts (open one in the Data tab by its id)",
                                 max_height=420, column_widths=["22%", "48%", "30%"], elem_id="disagreements-table")
    for trigger in (dataset.change, refresh.click):
        trigger(lambda d: agreement_tables(store, d), dataset, [summary, table, disagreements])
    # Opening the tab shows the labels given since (a page load restores the picks: studio.picks).
    tab.select(lambda: gr.update(choices=dataset_names(store, with_pairs=True)), outputs=dataset).then(
        lambda d: agreement_tables(store, d), dataset, [summary, table, disagreements])
    return dataset
