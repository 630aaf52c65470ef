"""Export preference pairs in the formats TRL's trainers load directly.

- ``conversational``: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``,
  TRL's conversational explicit-prompt format; lossless, the trainer applies the chat template.
- ``trl``: plain text ``{"prompt": str, "chosen": str, "rejected": str}``. A single-turn prompt is
  its text; a multi-turn one is written as an HH-RLHF transcript (``\\n\\nHuman: ...``) with the
  answers as their ``\\n\\nAssistant: ...`` continuation, which imports back as the same pair.

Only pairs with a preference are exported (from labels given here, else from the source file; see
`store.labelling.PAIR_PREFERENCE`); ties, both-bad, skips, split votes and unlabelled pairs are
left out and counted, so the caller can say what was left out and why.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import StudioError
from store.db import Store
from store.formats import render_hh
from store.labelling import PAIR_PREFERENCE

EXPORT_FORMATS = ("conversational", "trl")

PAIRS_WITH_PREFERENCE = f"""
WITH preference AS ({PAIR_PREFERENCE})
SELECT p.id, pr.messages AS prompt, a.messages AS first, b.messages AS second, pref.verdict, pref.outcome,
       pref.decided_by,
       coalesce(json_extract_string(a.generation, '$.finish') = 'length', false) AS first_cut,
       coalesce(json_extract_string(b.generation, '$.finish') = 'length', false) AS second_cut
FROM pairs p
JOIN preference pref ON pref.pair_id = p.id
JOIN prompts pr ON pr.id = p.prompt_id
JOIN responses a ON a.id = p.first_id
JOIN responses b ON b.id = p.second_id
WHERE $dataset_filter
ORDER BY p.rowid
"""


class ExportError(StudioError, ValueError):
    pass


ANNOTATORS = ("all", "people")  # an export's labels: everyone's, or people's and the files' only (no AI judge's)
DECIDED_BY = {"people": "people's labels", "file": "the file's verdicts", "judge": "AI labels"}


@dataclass
class ExportReport:
    path: str
    pairs: int
    left_out: dict[str, int]  # pairs without a preference, by why: unlabelled, tie, both-bad, skip, split
    decided_by: dict[str, int] | None = None  # pairs written, by whose verdict: people, file, judge
    what: str = "pairs"  # or "demonstrations": a dataset of prompts with their answers, for SFT

    @property
    def without_preference(self) -> int:
        return sum(self.left_out.values())

    def summary(self) -> str:
        text = f"wrote {self.pairs:,} {self.what} to {self.path}"
        if self.decided_by:
            text += (
                " (" + ", ".join(f"{n:,} from {DECIDED_BY[who]}" for who, n in sorted(self.decided_by.items())) + ")"
            )
        if self.left_out:
            reasons = ", ".join(f"{n:,} {why}" for why, n in sorted(self.left_out.items()))
            text += f"; left out {self.without_preference:,} without a preference ({reasons})"
        return text


def _as_text(prompt: list[dict], chosen: list[dict], rejected: list[dict]) -> dict:
    single_turn = (len(prompt) == 1 and prompt[0]["role"] == "user"
                   and len(chosen) == 1 and len(rejected) == 1)
    if single_turn:
        return {"prompt": prompt[0]["content"], "chosen": chosen[0]["content"],
                "rejected": rejected[0]["content"]}
    if any(m["role"] == "system" for m in prompt + chosen + rejected):
        raise ExportError("a pair has a system message, which plain text cannot hold; "
                          "use --format conversational")
    head = render_hh(prompt)
    return {"prompt": head, "chosen": render_hh(prompt + chosen)[len(head):],
            "rejected": render_hh(prompt + rejected)[len(head):]}


def _pairs_with_preference(store: Store, dataset: str | None) -> list[dict]:
    params = []
    dataset_filter = "true"
    if dataset is not None:
        dataset_id = store.dataset_id(dataset)
        if dataset_id is None:
            raise ExportError(f"no dataset named '{dataset}'")
        dataset_filter = "p.id IN (SELECT pair_id FROM dataset_pairs WHERE dataset_id = ?)"
        params.append(dataset_id)
    return store.query(PAIRS_WITH_PREFERENCE.replace("$dataset_filter", dataset_filter), params)


def unpaired_records(store: Store, dataset: str | None = None) -> tuple[list[dict], dict[str, int]]:
    """The answers of a dataset's pairs as unpaired verdicts (KTO's data): {pair_id, prompt,
    completion, label, completion_cut} with label True for a preferred side, False for the other
    side and for both sides of a pair labelled both-bad, completion_cut as in `preference_records`;
    and the count of pairs left out, by why (ties, skips, ...)."""
    records, left_out = [], {}
    for row in _pairs_with_preference(store, dataset):
        first, second = json.loads(row["first"]), json.loads(row["second"])
        if row["verdict"] is not None:
            labels = (row["verdict"] == "first", row["verdict"] == "second")
        elif row["outcome"] == "both-bad":
            labels = (False, False)
        else:
            left_out[row["outcome"]] = left_out.get(row["outcome"], 0) + 1
            continue
        for side, label, cut in zip((first, second), labels, (row["first_cut"], row["second_cut"])):
            records.append({"pair_id": row["id"], "prompt": json.loads(row["prompt"]), "completion": side,
                            "label": label, "completion_cut": cut})
    return records, left_out


def preference_records(store: Store, dataset: str | None = None,
                       annotators: str = "all") -> tuple[list[dict], dict[str, int]]:
    """The pairs (of one dataset, or all) with a preference, as conversational records
    {pair_id, prompt, chosen, rejected} (message lists), chosen_side (first or second: which side
    of the stored pair was preferred) and chosen_cut, rejected_cut (whether that answer was
    generated here and cut by its length limit rather than ended by the model), and the count of
    those left out, by why. `annotators` "people" leaves out the pairs only an AI judge labelled; each
    record says whose verdict it is (`decided_by`: people, file or judge)."""
    if annotators not in ANNOTATORS:
        raise ExportError(f"unknown annotators {annotators!r}; choose {' or '.join(ANNOTATORS)}")
    records, left_out = [], {}
    for row in _pairs_with_preference(store, dataset):
        if row["verdict"] is not None and row["decided_by"] == "judge" and annotators == "people":
            left_out["AI labels only"] = left_out.get("AI labels only", 0) + 1
            continue
        if row["verdict"] is None:
            left_out[row["outcome"]] = left_out.get(row["outcome"], 0) + 1
            continue
        first, second = json.loads(row["first"]), json.loads(row["second"])
        if first == second:  # stored before identical answers were refused; no import would take it back
            left_out["identical sides"] = left_out.get("identical sides", 0) + 1
            continue
        sides = [(first, row["first_cut"]), (second, row["second_cut"])]
        (chosen, chosen_cut), (rejected, rejected_cut) = sides if row["verdict"] == "first" else sides[::-1]
        records.append({"pair_id": row["id"], "prompt": json.loads(row["prompt"]), "chosen": chosen,
                        "rejected": rejected, "chosen_side": row["verdict"], "chosen_cut": chosen_cut,
                        "rejected_cut": rejected_cut, "decided_by": row["decided_by"]})
    return records, left_out


def demonstration_records(store: Store, dataset: str) -> list[dict]:
    """The demonstrations of a dataset, for supervised fine-tuning: each of its prompts with an
    answer that came with it in an imported file (a demonstrations import; an instruction's
    output; a conversation's last assistant turns), as {prompt_id, prompt, completion} (message
    lists), in the order stored. Generated candidates and the sides of pairs are not answers to
    imitate and are left out, and so are empty answers."""
    rows = store.query("""
        SELECT p.id AS prompt_id, p.messages::VARCHAR AS prompt, r.messages::VARCHAR AS completion
        FROM responses r JOIN prompts p ON p.id = r.prompt_id
        JOIN dataset_prompts dp ON dp.prompt_id = p.id
        JOIN datasets d ON d.id = dp.dataset_id AND d.name = ?
        WHERE r.generation IS NULL AND r.model IS NULL AND NOT r.is_empty
          AND r.id NOT IN (SELECT first_id FROM pairs UNION ALL SELECT second_id FROM pairs)
        ORDER BY p.rowid, r.rowid""", [dataset])
    return [{"prompt_id": r["prompt_id"], "prompt": json.loads(r["prompt"]), "completion": json.loads(r["completion"])}
            for r in rows]


def export_pairs(store: Store, out: str | Path, dataset: str | None = None,
                 fmt: str = "conversational", annotators: str = "all") -> ExportReport:
    """Write the pairs (of one dataset, or all) to `out` (.jsonl or .parquet), atomically."""
    out = Path(out)
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if out.is_dir():
        raise ExportError(f"{out}: is a folder; give a file name ending in .jsonl or .parquet")
    if out.suffix not in (".jsonl", ".parquet"):
        raise ExportError(f"{out}: the file name must end in .jsonl or .parquet")
    pairs, left_out = preference_records(store, dataset, annotators)
    decided_by: dict[str, int] = {}
    for r in pairs:
        decided_by[r["decided_by"]] = decided_by.get(r["decided_by"], 0) + 1
    records = [_as_text(r["prompt"], r["chosen"], r["rejected"]) if fmt == "trl"
               else {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in pairs]
    what = "pairs"
    if not records and not left_out and dataset is not None:
        # A dataset of demonstrations: TRL's prompt-completion records (conversational, or plain text
        # for one user turn and one answer with --format trl), what its SFTTrainer reads.
        what = "demonstrations"
        records = [{"prompt": r["prompt"][0]["content"], "completion": r["completion"][0]["content"]}
                   if fmt == "trl" and len(r["prompt"]) == 1 and len(r["completion"]) == 1 and
                   r["prompt"][0]["role"] == "user" else {"prompt": r["prompt"], "completion": r["completion"]}
                   for r in demonstration_records(store, dataset)]

    partial = out.with_name(out.name + ".partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".parquet":
            pq.write_table(pa.Table.from_pylist(records), partial)
        else:
            with open(partial, "w", encoding="utf-8") as f:
                for record in records:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(partial, out)
    except (OSError, pa.ArrowException) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise ExportError(f"{out}: cannot write the export ({reason}); nothing was written") from None
    finally:
        try:
            partial.unlink(missing_ok=True)
        except OSError:
            pass  # its folder could not be made: there is no partial file
    return ExportReport(str(out), len(records), left_out, decided_by, what)
