"""Export tab: merge a trained policy into its base and export GGUF files for llama.cpp and Ollama,
as a job; the finished export lists each file with the check of its logits against transformers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from common.errors import StudioError
from pipelines.export import QUANTS, REPORT
from pipelines.models import DEFAULT_MODEL
from store import Store
from store.models import names_by_path, policy_adapters
from store.queries import latest_metrics, run_row, runs_of_kinds
from studio import service
from studio.context import Context, handler
from studio.service import POLICY_METHODS

FILE_COLUMNS = ["model", "quant", "MB", "held-out perplexity (against f16)", "next token",
                "largest logit difference", "top-10 overlap", "answer to the check prompt", "file"]
EXPLANATION = """
The adapter is merged into its base and saved (safetensors, tokenizer, chat template); llama.cpp's
converter writes an f16 GGUF and llama.cpp's quantiser makes the smaller files. Each file is then
loaded in llama.cpp and checked against the merged model in transformers on a fixed prompt: the next
token must be the same for f16, and the logits close (q8_0 and q4_k_m drift more; the table says how
much). Beside every file is an Ollama `Modelfile`. The files appear in the Compare tab.

How to read the check: *next token* must be the same; the *largest logit difference* is the biggest
gap between the file's and transformers' scores over the whole vocabulary. Those scores span tens of
units, so a difference below about 1 is a faithful file (quantised files sit there), and several units
means the file answers differently: look at its top-10 overlap and its answer before using it.
"""


def exportable(store: Store) -> list[str]:
    return policy_adapters(store) + [DEFAULT_MODEL]


def export_runs(store: Store) -> list[tuple[str, int]]:
    # No status in the names: a list does not refresh while it is open; the line under it says it.
    return [(f"run {r['id']} · {json.loads(r['config'])['name']}", r["id"])
            for r in runs_of_kinds(store, ["export"])]


def export_view(store: Store, run_id: int | None) -> tuple[str, list[list], str]:
    """The run's state line, its files table and the Ollama commands."""
    if run_id is None:
        return "No export yet.", [], ""
    run = run_row(store, run_id)
    line = f"Run {run_id}: **{run['status']}**"
    if run["status"] == "running":
        progress = latest_metrics(store, run_id).get("progress")
        line += f" {progress:.0%}" if progress is not None else ""
    if run["message"]:
        line += f" · {run['message']}"
    report_path = Path(run["folder"]) / REPORT
    if run["status"] != "succeeded" or not report_path.exists():
        return line, [], ""
    report = json.loads(report_path.read_text())
    names = names_by_path(store, run_id)
    rows, commands = [], []
    for f in report["files"]:
        name = names.get(f["path"], "?")
        rows.append([name, f["quant"], round(f["bytes"] / 1e6, 1), perplexity_words(f),
                     "same" if f["argmax_agrees"] else "differs",
                     round(f["max_abs_diff"], 4), f"{f['top10_overlap']}/10", f["reply"], f["path"]])
        commands.append(f"ollama create {name} -f {f['modelfile']}")
    served = report["files"][-1]  # the smallest file asked for
    serve = (f"alignstudio serve-model {served['path']} --name {names.get(served['path'], 'policy')} --port 8000")
    return line, rows, ("Use them in Ollama:\n\n```\n" + "\n".join(commands) + "\n```\n\nOr serve one as an "
                        "OpenAI-compatible API (base URL `http://127.0.0.1:8000/v1`; Ctrl-C stops it):\n\n```\n"
                        + serve + "\n```")


def perplexity_words(f: dict) -> str:
    """An export file's cost in the table: f16's perplexity, or a smaller file's change against it
    ("3.2x smaller, +4.1% (+1.0% to +7.5%)"); "-" for an export made before it was measured."""
    if "ppl" not in f:
        return "-"
    if "ppl_change" not in f:
        return f"{f['ppl']:.2f}"
    return (f"{f['smaller']:.1f}x smaller, {f['ppl_change']:+.1%} ({f['ppl_change_low']:+.1%} to "
            f"{f['ppl_change_high']:+.1%}): {f['ppl_verdict']}")


def start_export(ctx: Context, name, chosen):
    if not name:
        return "**Pick a model to export.**", gr.update()
    if not chosen:
        return "**Tick at least one file type.**", gr.update()
    try:
        run_id = service.start_export(ctx.runner, model=name, quants=chosen)
    except StudioError as e:  # every error a user can act on, said as a sentence
        return f"**{e}**", gr.update()
    return f"Run {run_id} started.", gr.update(choices=export_runs(ctx.store), value=run_id)


def build(ctx: Context, tab: gr.Tab) -> SimpleNamespace:
    store = ctx.store
    gr.Markdown("Export a trained policy, or the default model, as GGUF files for llama.cpp and Ollama, each "
                "checked against transformers.")
    with gr.Accordion("How a file is made and checked", open=False):
        gr.Markdown(EXPLANATION)
    choices = exportable(store)
    with gr.Row(equal_height=True):
        model = gr.Dropdown(choices, value=choices[0], label="Model to export", scale=3, elem_id="export-model",
                            info=f"a trained policy ({POLICY_METHODS}), or the default model itself")
        quants = gr.CheckboxGroup(list(QUANTS), value=list(QUANTS), label="Files", scale=3)
        start = gr.Button("Export", variant="primary", scale=1, elem_id="export-start")
    runs = export_runs(store)
    picked = gr.Dropdown(runs, value=runs[0][1] if runs else None, label="Export run", elem_id="export-run")
    said = gr.Markdown(elem_id="export-said")  # the answer to a click; the status line below refreshes
    status = gr.Markdown(elem_id="export-status")
    files = gr.Dataframe(headers=FILE_COLUMNS, interactive=False, wrap=True, elem_id="export-files",
                         column_widths=["11%", "6%", "5%", "16%", "7%", "8%", "7%", "20%", "20%"])
    ollama = gr.Markdown()

    start.click(handler(start_export, ctx), [model, quants], [said, picked])
    picked.change(lambda r: export_view(store, r), picked, [status, files, ollama])
    gr.Timer(2.0).tick(lambda r: export_view(store, r), picked, [status, files, ollama], show_progress="hidden")
    tab.select(lambda: (gr.update(choices=exportable(store)), gr.update(choices=export_runs(store))),
               outputs=[model, picked])
    return SimpleNamespace(model=model, picked=picked)
