"""What the tests share: the `alignstudio` command as a user runs it (`cli`), a run's events
(`read_events`), waiting for a condition (`wait_until`), and preference pairs the tests make themselves
(`make_pairs`, `write_pairs`, `arithmetic_pairs`), and a shared model folder built once (`built_once`).

The pairs are in the HH-RLHF layout (a transcript per side:
"\\n\\nHuman: ...\\n\\nAssistant: ..."), so that a bare clone of the project tests everything. Only
the tests about the HH-RLHF format itself read the real sample in ../shared/data.

The pairs are varied the way real ones are: one to three turns, answers from a few words to a few
hundred (some longer than a training run's max length), non-ASCII text, and a few prompts about
bombs (the curation tests search for them). Every prompt is distinct and both sides always differ.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ALIGNSTUDIO = str(Path(sys.executable).parent / "alignstudio")


@contextlib.contextmanager
def exclusively(path: Path):
    """Hold a lock beside `path` for as long as the block runs: the test processes (pytest -n 2)
    share the models folder, and a model one builds the other must wait for, not build over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def built_once(path: Path, build, ready=lambda path: (path / "config.json").is_file()) -> Path:
    """The folder `path`, built by `build(partial)` the first time (into a partial folder moved
    into place whole), while no other test process builds it."""
    with exclusively(path):
        if not ready(path):
            shutil.rmtree(path, ignore_errors=True)
            partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
            shutil.rmtree(partial, ignore_errors=True)
            build(partial)
            os.replace(partial, path)
    return path


def cli(*args, workspace, models_dir=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    """`alignstudio ARGS --workspace W`, as a user runs it; with `check`, a failure raises with
    its output."""
    command = [ALIGNSTUDIO, *map(str, args), "--workspace", str(workspace)]
    if models_dir:
        command += ["--models-dir", str(models_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def read_events(folder) -> list[dict]:
    """The events a run wrote (`folder`: its run folder, or a run row with one)."""
    folder = Path(folder["folder"] if isinstance(folder, dict) else folder)
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def wait_until(condition, timeout: float = 60, what: str = "the condition", poll_s: float = 0.1):
    """Call `condition()` until it returns something true (returned), or fail after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(poll_s)
    raise AssertionError(f"{what} did not happen in {timeout:.0f} s")

TOPICS = ["cats", "bread", "the sea", "rain", "music", "trees", "stars", "tea", "maps", "ice", "glass", "sand",
          "bicycles", "bees", "coffee", "snow", "rivers", "clocks", "paper", "bridges", "café culture", "Zürich",
          "origami", "volcanoes", "a bomb in a film plot", "bomb shelters"]
ASKS = ["Can you tell me about {t}?", "What should I know about {t}?", "Why do people like {t}?",
        "How would you explain {t} to a child?", "Is there anything dangerous about {t}?",
        "Write two sentences about {t}.", "What is the history of {t}?"]
FOLLOW_UPS = ["Can you say more?", "Why is that?", "Give me an example.", "Is that always true?"]
GOOD = ["{T} is a broad subject; here is a short, careful overview.", "Happy to help. {T} has a long history.",
        "In short: {t} matters to many people, for different reasons.", "Here is what I know about {t}, plainly."]
BAD = ["I don't know.", "{t} {t} {t}.", "Why would you ask about {t}?", "Whatever you like about {t} is fine."]
FILLER = ("It depends on where you are and what you need, and it helps to ask someone who knows the place well. "
          "Many details change over time, so check a recent source before you rely on any of it. ")


def _answer(rng: random.Random, templates: list[str], topic: str) -> str:
    text = rng.choice(templates).format(t=topic, T=topic[:1].upper() + topic[1:])
    return text + (" " + FILLER * rng.choice([0, 0, 0, 1, 2, 4, 12]) if rng.random() < 0.7 else "")


def make_pairs(n: int = 1000, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        question = rng.choice(ASKS).format(t=topic) + f" (question {i})"
        transcript = f"\n\nHuman: {question}"
        for _ in range(rng.choice([0, 0, 1, 2])):  # earlier turns
            transcript += f"\n\nAssistant: {_answer(rng, GOOD, topic)}\n\nHuman: {rng.choice(FOLLOW_UPS)}"
        chosen, rejected = _answer(rng, GOOD, topic), _answer(rng, BAD, topic)
        rows.append({"chosen": f"{transcript}\n\nAssistant: {chosen}",
                     "rejected": f"{transcript}\n\nAssistant: {rejected}"})
    return rows


def write_pairs(path: Path, n: int = 1000, seed: int = 0) -> Path:
    """The pairs as a gzipped JSON-lines file (like the HH sample); returns the path."""
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in make_pairs(n, seed):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def arithmetic_pairs(folder: Path, n: int = 12) -> Path:
    """`n` one-turn pairs of a right sum against a dodge, in a JSONL file in `folder` (the file's
    verdict: the sum)."""
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps({
        "prompt": f"Question {i}: what is {i} plus {i}?",
        "chosen": f"{i} plus {i} is {2 * i}.",
        "rejected": f"I would rather talk about something else than question {i}."}) + "\n" for i in range(n)))
    return path
