"""A red-team pass over the command line: bad files, bad bundles, bad settings and bad names, each
thrown at a fresh workspace as a careless or hostile user would, and each result sorted.

    python benchmarks/red_team.py [--workspace DIR] [--only SUBSTRING]

Every attack runs `alignstudio` in this process (its `main`, as the command line calls it) and is
sorted by what a user would meet:

- **handled**: refused (or, where the attack is a legal request, done) with a sentence and no
  traceback, before any run exists, and the workspace's counts are as they were;
- **weak**: no traceback and nothing lost, but a run was made that then failed, or the answer was
  not what the attack deserved (an `expect` of refused that was accepted);
- **broken**: a traceback, a run left "running", a workspace that no longer opens, or pairs, labels
  or datasets changed by a refused command (data lost).

The script prints one line per attack and a count of each; it exits non-zero if any is broken.
It needs the tiny test model (the test suite's `tiny-llama-2x64`, made by any test run) and takes
a few minutes on two cores, most of it the three short training runs it starts from.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = "tiny-llama-2x64"
SMALL = ["--max-steps", "1", "--batch-size", "2", "--max-length", "128", "--lora-r", "4", "--lora-alpha", "8"]


@dataclass
class Attack:
    what: str
    argv: list[str]
    refused: bool = True            # a refusal is the right answer (else: done, with a sentence)
    changes_data: bool = False      # a legal request that may add pairs or datasets
    says: str = ""                  # words the answer must hold (a bad line named)


def pair(prompt: str, chosen: str, rejected: str) -> str:
    return json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n"


def write_files(root: Path) -> dict[str, Path]:
    """The bad (and a few good) files the attacks import."""
    files = {}

    def put(name: str, data: bytes | str) -> None:
        path = root / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        files[name] = path

    good = "".join(pair(f"Question {i}?", f"A kind answer {i}.", f"A rude answer {i}.") for i in range(20))
    put("good.jsonl", good)
    put("empty.jsonl", "")
    put("garbage.jsonl", bytes(range(256)) * 40)
    put("one-bad-line.jsonl", good + "{not json\n")
    put("nul.jsonl", b'{"prompt": "a\x00b", "chosen": "c", "rejected": "d"}\n')  # a raw NUL byte
    put("wrong-types.jsonl", json.dumps({"prompt": "q", "chosen": 5, "rejected": ["x"]}) + "\n")
    put("missing-rejected.jsonl", json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    put("latin1.jsonl", '{"prompt": "caf\xe9", "chosen": "oui", "rejected": "non"}\n'.encode("latin-1"))
    put("array.jsonl", json.dumps([{"prompt": "q", "chosen": "a", "rejected": "b"}]))
    put("huge-line.jsonl", pair("q", "a" * 3_000_000, "b"))
    put("bad-roles.jsonl", json.dumps({"chosen": [{"role": "wizard", "content": "x"}],
                                       "rejected": [{"role": "user", "content": "y"}]}) + "\n")
    put("empty-prompts.jsonl", json.dumps({"prompt": ""}) + "\n" + json.dumps({"prompt": "   "}) + "\n")
    put("same-answers.jsonl", pair("q", "same", "same"))
    put("copies.jsonl", pair("q", "a", "b") * 300_000)
    put("truncated.jsonl.gz", gzip.compress(good.encode())[:60])
    put("not-parquet.parquet", b"PAR1 this is not parquet at all")
    put("bad.csv", 'prompt,chosen,rejected\n"unclosed,quote,here\n')
    put("picture.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    put("prompts.jsonl", "".join(json.dumps({"prompt": f"Tell me about {w}."}) + "\n" for w in ("tea", "rain", "owls")))
    put("guideline-huge.txt", "Judge {prompt} {answer_a} {answer_b}. " + "blah " * 250_000)
    put("guideline-no-answers.txt", "Which is better? {prompt}")
    put("references-empty.jsonl", "")
    (root / "a-folder.jsonl").mkdir()
    files["a-folder.jsonl"] = root / "a-folder.jsonl"
    return files


def attacks(ws: Path, models: Path, files: dict[str, Path], runs: dict[str, int], bundles: dict[str, Path]) \
        -> list[Attack]:
    w = ["--workspace", str(ws), "--models-dir", str(models)]
    tiny = str(models / TINY)
    f = {k: str(v) for k, v in files.items()}
    rm, dpo = str(runs["rm"]), str(runs["dpo"])
    return [
        # import
        Attack("import an empty file", ["import", f["empty.jsonl"], "--dataset", "x1", *w]),
        Attack("import binary garbage", ["import", f["garbage.jsonl"], "--dataset", "x2", *w]),
        Attack("import with one bad line", ["import", f["one-bad-line.jsonl"], "--dataset", "x3", *w]),
        Attack("import the same with --skip-bad", ["import", f["one-bad-line.jsonl"], "--dataset", "x4", "--skip-bad",
                                                   *w], refused=False, changes_data=True),
        Attack("import NUL bytes", ["import", f["nul.jsonl"], "--dataset", "x5", *w]),
        Attack("import wrong field types", ["import", f["wrong-types.jsonl"], "--dataset", "x6", *w]),
        Attack("import a pair without its rejected answer", ["import", f["missing-rejected.jsonl"], "--dataset", "x7",
                                                             *w]),
        Attack("import Latin-1 text", ["import", f["latin1.jsonl"], "--dataset", "x8", *w]),
        Attack("import one JSON array", ["import", f["array.jsonl"], "--dataset", "x9", *w]),
        Attack("import a 3 MB answer", ["import", f["huge-line.jsonl"], "--dataset", "x10", *w]),
        Attack("import unknown roles", ["import", f["bad-roles.jsonl"], "--dataset", "x11", *w]),
        Attack("import empty prompts", ["import", f["empty-prompts.jsonl"], "--dataset", "x12", *w]),
        Attack("import a pair with two equal answers", ["import", f["same-answers.jsonl"], "--dataset", "x13", *w]),
        Attack("import 300,000 copies of one pair", ["import", f["copies.jsonl"], "--dataset", "x14", *w],
               refused=False, changes_data=True),
        Attack("import a truncated gzip", ["import", f["truncated.jsonl.gz"], "--dataset", "x15", *w]),
        Attack("import a file that is not Parquet", ["import", f["not-parquet.parquet"], "--dataset", "x16", *w]),
        Attack("import a CSV with an unclosed quote", ["import", f["bad.csv"], "--dataset", "x17", *w]),
        Attack("import a picture", ["import", f["picture.png"], "--dataset", "x18", *w]),
        Attack("import a folder", ["import", f["a-folder.jsonl"], "--dataset", "x19", *w]),
        Attack("import a file that does not exist", ["import", "/nonexistent/pairs.jsonl", "--dataset", "x20", *w]),
        # a name is only a name: its exports are written inside the workspace (tested in tests/)
        Attack("import into a dataset named ../../etc", ["import", f["good.jsonl"], "--dataset", "../../etc", *w],
               refused=False, changes_data=True),
        Attack("import into an empty name", ["import", f["good.jsonl"], "--dataset", "", *w]),
        Attack("import the same file twice into one dataset", ["import", f["good.jsonl"], "--dataset", "pairs", *w],
               refused=False, changes_data=True),
        Attack("import prompts as demonstrations", ["import", f["prompts.jsonl"], "--dataset", "x21", "--format",
                                                    "demonstrations", *w]),
        # datasets
        Attack("split with share 1.5", ["split", "--dataset", "pairs", "--into", "a", "b", "--share", "1.5", *w]),
        Attack("split into a taken name", ["split", "--dataset", "pairs", "--into", "pairs", "b2", *w]),
        Attack("split an unknown dataset", ["split", "--dataset", "nope", "--into", "a3", "b3", *w]),
        Attack("filter by a model never scored", ["filter", "--dataset", "pairs", "--model", tiny, "--into", "f1",
                                                  "--keep-quantile", "0.5", *w]),
        Attack("filter keeping 0%", ["filter", "--dataset", "pairs", "--model", tiny, "--into", "f2",
                                     "--keep-quantile", "0", *w]),
        Attack("export into a file under /proc", ["export", "--dataset", "pairs", "--out", "/proc/out.jsonl", *w]),
        Attack("export over a folder", ["export", "--dataset", "pairs", "--out", f["a-folder.jsonl"], *w]),
        Attack("export an unknown dataset", ["export", "--dataset", "nope", "--out", str(ws.parent / "o.jsonl"), *w]),
        Attack("label queue with an unknown reward model", ["label-queue", "--dataset", "pairs", "--annotator", "a",
                                                            "--order", "uncertain", "--reward-model", "nope", *w]),
        # jobs that should be refused before they start
        Attack("generate 0 answers per prompt", ["generate", "--dataset", "prompts", "--model", tiny, "-n", "0", *w]),
        Attack("generate -1 tokens", ["generate", "--dataset", "prompts", "--model", tiny, "--max-new-tokens", "-1",
                                      *w]),
        Attack("generate for an unknown dataset", ["generate", "--dataset", "nope", "--model", tiny, *w]),
        Attack("generate from a model that does not exist", ["generate", "--dataset", "prompts", "--model",
                                                              "/nonexistent/model", *w]),
        Attack("score with a text file as the model", ["score", "--dataset", "pairs", "--model", f["good.jsonl"], *w]),
        Attack("train on an unknown dataset", ["train", "dpo", "--dataset", "nope", "--base", tiny, *SMALL, *w]),
        Attack("train with a negative learning rate", ["train", "dpo", "--dataset", "pairs", "--base", tiny,
                                                       "--learning-rate", "-1", *SMALL, *w]),
        Attack("train with batch size 0", ["train", "rm", "--dataset", "pairs", "--base", tiny, *SMALL,
                                           "--batch-size", "0", *w]),
        Attack("train with LoRA rank 0", ["train", "rm", "--dataset", "pairs", "--base", tiny, *SMALL,
                                          "--lora-r", "0", *w]),
        Attack("train on a reward model as the base", ["train", "dpo", "--dataset", "pairs", "--base", f"rm-run{rm}",
                                                       *SMALL, *w]),
        Attack("train on a base that does not exist", ["train", "dpo", "--dataset", "pairs", "--base",
                                                       "/nonexistent/model", *SMALL, *w]),
        Attack("train on pairs evaluated on themselves", ["train", "dpo", "--dataset", "pairs", "--eval-dataset",
                                                          "pairs", "--base", tiny, *SMALL, *w]),
        Attack("PPO against a DPO run as the reward model", ["train", "ppo", "--prompts", "prompts", "--reward-run",
                                                             dpo, "--base", tiny, *SMALL, *w]),
        Attack("train with 0 processes", ["train", "rm", "--dataset", "pairs", "--base", tiny, *SMALL,
                                          "--num-processes", "0", *w]),
        Attack("train rm on demonstrations", ["train", "rm", "--dataset", "prompts", "--base", tiny, *SMALL, *w]),
        # evaluation and judging
        Attack("evaluate a run that does not exist", ["evaluate", "--policy-run", "999", "--prompts", "prompts",
                                                      "--rule", "heuristic", *w]),
        Attack("evaluate a reward model as a policy", ["evaluate", "--policy-run", rm, "--prompts", "prompts",
                                                       "--rule", "heuristic", *w]),
        Attack("evaluate with no judge", ["evaluate", "--policy-run", dpo, "--prompts", "prompts", *w]),
        Attack("evaluate with a 1 MB guideline", ["evaluate", "--policy-run", dpo, "--prompts", "prompts",
                                                  "--llm-judge", "default", "--judge-guideline",
                                                  f["guideline-huge.txt"], *w]),
        Attack("evaluate with a guideline without the answers", ["evaluate", "--policy-run", dpo, "--prompts",
                                                                  "prompts", "--llm-judge", "default",
                                                                  "--judge-guideline", f["guideline-no-answers.txt"],
                                                                  *w]),
        Attack("evaluate with a text file as the LLM judge", ["evaluate", "--policy-run", dpo, "--prompts", "prompts",
                                                              "--llm-judge", f["good.jsonl"], *w]),
        Attack("evaluate with an empty reference file", ["evaluate", "--policy-run", dpo, "--prompts", "prompts",
                                                         "--rule", "heuristic", "--reference-file",
                                                         f["references-empty.jsonl"], *w]),
        Attack("evaluate its proxy as its judge", ["evaluate", "--policy-run", dpo, "--prompts", "prompts",
                                                   "--judge-run", rm, *w]),
        Attack("best-of-1000", ["evaluate", "--best-of", "1000", "--model", tiny, "--proxy-model", f"rm-run{rm}",
                                "--judge-run", str(runs["judge"]), "--prompts", "prompts", *w]),
        Attack("benchmark an unknown task", ["benchmark", "--model", f"dpo-run{dpo}", "--tasks", "no_such_task", *w]),
        Attack("benchmark a reward model", ["benchmark", "--model", f"rm-run{rm}", *w]),
        Attack("a round with 1000 answers per prompt", ["round", "--prompts", "prompts", "--reward-model",
                                                        f"rm-run{rm}", "--rule", "heuristic", "-n", "1000",
                                                        "--policy", tiny, "--eval-prompts", "prompts", *w]),
        Attack("a round on a dataset without prompts", ["round", "--prompts", "nope", "--reward-model", f"rm-run{rm}",
                                                        "--rule", "heuristic", "--policy", tiny, "--eval-prompts",
                                                        "prompts", *w]),
        Attack("a round scored by a policy", ["round", "--prompts", "prompts", "--reward-model", f"dpo-run{dpo}",
                                              "--rule", "heuristic", "--policy", tiny, "--eval-prompts", "prompts",
                                              *w]),
        # models and runs
        Attack("export a model that does not exist", ["export-model", "--model", "nope", *w]),
        Attack("export with an unknown quantisation", ["export-model", "--run", dpo, "--quant", "q1_z", *w]),
        Attack("serve a text file as a model", ["serve-model", f["good.jsonl"], *w]),
        Attack("serve on all interfaces without a key", ["serve-model", "default", "--host", "0.0.0.0", *w]),
        Attack("cancel a run that does not exist", ["cancel", "999", *w]),
        Attack("resume a run that succeeded", ["resume", rm, *w]),
        Attack("report card of a policy", ["rm-report", dpo, *w]),
        # bundles
        # A bundle whose events hold bad lines comes back without them, and says which.
        *(Attack(f"import a bundle: {what}", ["runs", "import", str(path), *w],
                 refused=not (what.startswith("events with") or what == "as it came back"),
                 says="events.jsonl:" if what.startswith("events with") else "")
          for what, path in bundles.items()),
        Attack("import the same bundle again", ["runs", "import", str(bundles["as it came back"]), *w]),
    ]


def run_cli(argv: list[str]) -> tuple[int, str]:
    from studio.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage line and sentence, or a command's own sentence
            code = e.code if isinstance(e.code, int) else 2
            if isinstance(e.code, str):
                print(e.code)
        except Exception:  # noqa: BLE001 - what a user would see as a traceback
            traceback.print_exc()
            code = -1
    return code, out.getvalue()


def counts(ws: Path, models: Path) -> dict | None:
    from studio.workspace import Workspace

    try:
        with Workspace.at(ws, models).open_store() as store:
            stats = store.stats()
            stuck = store.scalar("SELECT count(*) FROM runs WHERE status IN ('queued', 'running')")
            return {**stats, "stuck": stuck}
    except Exception as e:  # noqa: BLE001 - the workspace no longer opens
        return {"error": str(e)}


def prepare(ws: Path, models: Path, files: dict[str, Path], root: Path) -> tuple[dict[str, int], dict[str, Path]]:
    """The workspace the attacks meet: pairs, prompts, a reward model, a DPO policy and a bundle."""
    w = ["--workspace", str(ws), "--models-dir", str(models)]
    tiny = str(models / TINY)
    other = root / "other.jsonl"
    other.write_text("".join(pair(f"Other question {i}?", f"A kind answer {i}.", f"A rude one {i}.") for i in range(8)))
    files["other.jsonl"] = other
    for file, name in (("good.jsonl", "pairs"), ("prompts.jsonl", "prompts"), ("other.jsonl", "other")):
        code, out = run_cli(["import", str(files[file]), "--dataset", name, *w])
        assert code == 0, out
    runs = {}
    for kind, dataset in (("rm", "pairs"), ("dpo", "pairs"), ("judge", "other")):
        code, out = run_cli(["train", "rm" if kind == "judge" else kind, "--dataset", dataset, "--base", tiny, *SMALL,
                             *w])
        assert code == 0, out
        runs[kind] = counts(ws, models)["runs"]
    made = root / "bundle-made"
    code, out = run_cli(["train", "rm", "--dataset", "pairs", "--base", tiny, *SMALL, "--eval-share", "0.25",
                         "--bundle", str(made), *w])
    assert code == 0, out
    subprocess.run(["bash", str(made / "launch.sh")], env={"PYTHON": sys.executable, "PYTHONPATH": str(ROOT),
                                                           "PATH": "/usr/bin:/bin"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900, check=True)
    bundles = {}

    def variant(what: str, change) -> None:
        path = root / f"bundle-{len(bundles)}"
        shutil.copytree(made, path, symlinks=True)
        change(path)
        bundles[what] = path

    def edit_config(key, value):
        def change(path):
            config = json.loads((path / "config.json").read_text())
            config[key] = value
            (path / "config.json").write_text(json.dumps(config))
        return change

    def append_event(line):
        return lambda path: (path / "events.jsonl").write_text((path / "events.jsonl").read_text() + line + "\n")

    def link_in_output(path):
        output = path / json.loads((path / "config.json").read_text())["output"]
        (output / "passwd").symlink_to("/etc/passwd")

    def loop_link(path):
        output = path / json.loads((path / "config.json").read_text())["output"]
        (output / "loop").symlink_to(output)

    variant("events with a JSON array line", append_event("[1, 2, 3]"))
    variant("events with NUL bytes", append_event('{"status": "running\x00"}'))
    variant("events with metrics 'nope'", append_event('{"step": 3, "metrics": "nope"}'))
    variant("its kind changed", lambda p: (p / "bundle.json").write_text(
        json.dumps({**json.loads((p / "bundle.json").read_text()), "kind": "dpo"})))
    variant("an unknown kind", lambda p: (p / "bundle.json").write_text(
        json.dumps({**json.loads((p / "bundle.json").read_text()), "kind": "rm; rm -rf /"})))
    variant("output outside the bundle", edit_config("output", "../../.."))
    variant("an absolute output", edit_config("output", "/etc"))
    variant("a link to /etc/passwd in its output", link_in_output)
    variant("a link loop in its output", loop_link)
    variant("no bundle.json", lambda p: (p / "bundle.json").unlink())
    variant("config.json not JSON", lambda p: (p / "config.json").write_text("{oops"))
    variant("no events", lambda p: (p / "events.jsonl").unlink())
    variant("as it came back", lambda p: None)
    return runs, bundles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace")
    parser.add_argument("--only", default="", help="run only the attacks whose words hold this")
    args = parser.parse_args()
    from benchmarks.peak import models_dir

    models = Path(models_dir())
    if not (models / TINY / "config.json").is_file():
        raise SystemExit(f"{models / TINY}: the tiny test model is missing; run the test suite once to make it")
    root = Path(args.workspace or tempfile.mkdtemp(prefix="red-team-"))
    root.mkdir(parents=True, exist_ok=True)
    ws = root / "ws"
    files = write_files(root)
    runs, bundles = prepare(ws, models, files, root)
    verdicts = {"handled": 0, "weak": 0, "broken": 0}
    for attack in attacks(ws, models, files, runs, bundles):
        if args.only not in attack.what:
            continue
        before = counts(ws, models)
        code, out = run_cli(attack.argv)
        after = counts(ws, models)
        lost = "error" in after or after["stuck"] or (not attack.changes_data and any(
            after[k] != before[k] for k in ("pairs", "labels", "datasets", "prompts") if k in before))
        made_run = after.get("runs", 0) > before.get("runs", 0)
        if "Traceback" in out or code == -1 or lost:
            verdict, why = "broken", ("a traceback" if "Traceback" in out or code == -1 else
                                      f"the workspace changed: {before} -> {after}")
        elif attack.refused and code == 0:
            verdict, why = "weak", "accepted"
        elif attack.refused and made_run:
            verdict, why = "weak", "refused only after a run was made"
        elif not attack.refused and code != 0:
            verdict, why = "weak", "refused a legal request"
        elif attack.says and attack.says not in out:
            verdict, why = "weak", f"did not say {attack.says!r}"
        else:
            verdict, why = "handled", ""
        verdicts[verdict] += 1
        said = " ".join(out.strip().splitlines()[-1:])[:160] if out.strip() else "(nothing said)"
        print(f"{verdict:8} {attack.what}: {said}" + (f"  [{why}]" if why else ""), flush=True)
    print(f"\n{sum(verdicts.values())} attacks: " + ", ".join(f"{n} {v}" for v, n in verdicts.items()))
    if verdicts["broken"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
