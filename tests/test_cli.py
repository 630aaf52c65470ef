"""The `alignstudio` command as a user runs it."""

import json
import subprocess
from pathlib import Path

from helpers import ALIGNSTUDIO, cli


def stats(workspace):
    return json.loads(cli("stats", "--json", workspace=workspace).stdout)


def test_import_export_reimport_the_hh_sample(tmp_path, hh_file):
    ws, other = tmp_path / "ws", tmp_path / "other"
    out = cli("import", hh_file, "--dataset", "hh", workspace=ws).stdout
    assert "imported 1000 pairs into dataset 'hh'" in out and "1 empty responses kept" in out
    assert stats(ws) == {"prompts": 1000, "responses": 2000, "pairs": 1000, "labels": 0,
                         "datasets": 1, "runs": 0, "models": 0}
    for name in ("hh.jsonl", "hh.parquet"):
        assert "wrote 1,000 pairs" in cli("export", "--out", tmp_path / name, "--dataset", "hh", workspace=ws).stdout
        cli("import", tmp_path / name, "--dataset", name, workspace=other)
    assert stats(other)["pairs"] == 1000 and stats(other)["datasets"] == 2


def test_a_broken_line_imports_nothing_exits_non_zero_and_names_the_line(tmp_path, pairs_file):
    import gzip
    lines = gzip.open(pairs_file, "rt", encoding="utf-8").read().splitlines()[:10]
    lines[6] = lines[6][:-20]  # cut short: no longer valid JSON
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    result = cli("import", broken, workspace=tmp_path / "ws", check=False)
    assert result.returncode == 1
    assert f"{broken}:7: not valid JSON" in result.stderr
    assert "nothing imported" in result.stderr
    assert stats(tmp_path / "ws")["pairs"] == 0 and stats(tmp_path / "ws")["datasets"] == 0
    skipped = cli("import", broken, "--skip-bad", workspace=tmp_path / "ws")
    assert "imported 9 pairs" in skipped.stdout and f"{broken}:7:" in skipped.stderr


def test_score_job_runs_listing_and_filter(tmp_path, pairs_file, tiny_model, models_dir):
    ws = tmp_path / "ws"
    subset = tmp_path / "hh10.jsonl"
    import gzip
    subset.write_text("".join(gzip.open(pairs_file, "rt", encoding="utf-8").readlines()[:10]))
    cli("import", subset, "--dataset", "hh", workspace=ws)
    out = cli("score", "--dataset", "hh", "--model", tiny_model, workspace=ws, models_dir=models_dir).stdout
    assert "run 1: succeeded - scored 20 responses" in out
    runs = json.loads(cli("runs", "--json", workspace=ws).stdout)
    assert [(r["id"], r["kind"], r["status"], r["metrics"]["scored"]) for r in runs] == [
        (1, "perplexity", "succeeded", 20.0)
    ]
    out = cli("filter", "--dataset", "hh", "--model", tiny_model, "--keep-quantile", "0.5", "--into", "hh-plausible",
              workspace=ws).stdout
    assert "'hh-plausible' keeps 5 of 10 prompts, 10 of 20 responses, 5 of 10 pairs of 'hh'" in out


def test_prepare_loads_the_demo_prompts_once(tmp_path, models_dir, default_model_path):
    ws = tmp_path / "ws"
    out = cli("prepare", workspace=ws, models_dir=models_dir).stdout
    assert f"default model ready: {default_model_path}" in out
    assert "imported 160 prompts into dataset 'demo-prompts'" in out
    cli("prepare", workspace=ws, models_dir=models_dir)
    assert stats(ws)["prompts"] == 160 and stats(ws)["datasets"] == 1


def test_serve_refuses_a_public_host_without_auth(tmp_path):
    result = cli("serve", "--host", "0.0.0.0", workspace=tmp_path / "ws", check=False)
    assert result.returncode != 0
    assert "refusing to serve on 0.0.0.0 without --auth" in result.stderr


def test_errors_are_one_clear_line(tmp_path):
    result = cli("export", "--out", tmp_path / "x.jsonl", "--dataset", "nope", workspace=tmp_path / "ws", check=False)
    assert result.returncode == 2 and result.stderr.strip() == "error: no dataset named 'nope'"
    result = cli("score", "--dataset", "nope", workspace=tmp_path / "ws", check=False)
    assert result.returncode == 2 and result.stderr.strip() == "error: no dataset named 'nope'"


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    """`alignstudio runs | head -3` must not end in a BrokenPipeError traceback."""
    reader_gone = subprocess.Popen([ALIGNSTUDIO, "stats", "--workspace", str(tmp_path / "ws")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader_gone.stdout.close()
    assert reader_gone.wait(timeout=120) == 1
    assert reader_gone.stderr.read() == b""


def test_each_training_method_lists_only_its_own_settings_with_their_defaults(tmp_path):
    def help_of(method):  # argparse wraps lines; the words are what matter
        return " ".join(cli("train", method, "--help", workspace=tmp_path).stdout.split())

    rm = help_of("rm")
    assert "--learning-rate" in rm and "(default: 0.0002)" in rm and "--eval-share" in rm and "--dataset" in rm
    for foreign in ("--kl-coef", "--num-generations", "--beta", "--prompts", "--reward-run", "--loss-type"):
        assert foreign not in rm, foreign
    ppo = help_of("ppo")
    assert "--kl-coef" in ppo and "(default: 0.15)" in ppo and "--clip-range" in ppo and "--reward-run" in ppo
    assert "--eval-share" not in ppo and "--loss-type" not in ppo and "--dataset " not in ppo
    dpo = help_of("dpo")
    assert "{sigmoid,ipo,hinge,sigmoid_norm}" in dpo and "--precompute-ref-log-probs" in dpo


def test_every_flag_the_readme_shows_is_one_the_command_takes():
    """The command lines of the README and the guides in docs/ (indented `alignstudio ...`) name only
    flags that --help lists."""
    import re

    from studio.cli import build_parser

    def subparsers(parser):
        return next((a.choices for a in parser._actions if hasattr(a, "choices") and isinstance(a.choices, dict)), {})

    root = Path(__file__).resolve().parents[1]
    pages = [root / "README.md", *(p for p in (root / "docs").glob("*.md") if p.name != "cli.md")]
    lines = [line.strip() for page in pages for line in page.read_text().splitlines()
             if line.startswith("    alignstudio ")]
    assert len(lines) > 15
    for line in lines:
        words = line.split("#")[0].split()[1:]
        parser = build_parser()
        while words and words[0] in subparsers(parser):
            parser = subparsers(parser)[words.pop(0)]
        known = {option for action in parser._actions for option in action.option_strings}
        for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", " ".join(words)):
            assert flag in known, f"docs: {line!r}: {flag} is not an option of this command"


def test_a_bad_setting_is_one_line_of_error_not_a_traceback(tmp_path):
    cli("import", Path(__file__).resolve().parents[1] / "assets" / "demo_prompts.jsonl", "--dataset", "p",
        workspace=tmp_path)
    result = cli("train", "dpo", "--dataset", "nope", "--no-wait", workspace=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr == "error: no dataset named 'nope'\n"
    result = cli("generate", "--dataset", "p", "--engine", "vllm", workspace=tmp_path, check=False)
    assert result.returncode == 2 and "invalid choice: 'vllm'" in result.stderr
    result = cli("train", "ppo", "--prompts", "p", "--reward-run", "7", workspace=tmp_path, check=False)
    assert result.returncode == 2 and result.stderr == ("error: run 7 did not train a reward model "
                                                        "(train one: alignstudio train rm)\n")
