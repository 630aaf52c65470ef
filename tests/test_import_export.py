"""Importing files into the store and exporting them for TRL, as a user of the CLI sees it."""

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store import ImportFailed, Store, export_pairs, import_file
from store.formats import render_hh


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


PAIRS = [{"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."}
         for i in range(5)]


def pair_texts(store):
    rows = store.query("""
        SELECT pr.messages::VARCHAR AS prompt, a.messages::VARCHAR AS chosen, b.messages::VARCHAR AS rejected
        FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id
        JOIN responses a ON a.id = p.first_id JOIN responses b ON b.id = p.second_id ORDER BY p.rowid""")
    return [(json.loads(r["prompt"]), json.loads(r["chosen"]), json.loads(r["rejected"])) for r in rows]


# --- the real HH-RLHF sample ------------------------------------------------------------------

def test_all_1000_hh_pairs_import_without_losing_or_moving_text(store, hh_file):
    report = import_file(store, hh_file, "hh")
    assert (report.pairs, report.new_pairs, report.errors, report.format) == (1000, 1000, [], "hh")
    assert store.stats()["pairs"] == 1000
    originals = [json.loads(line) for line in gzip.open(hh_file, "rt", encoding="utf-8")]
    stored = pair_texts(store)
    assert len(stored) == 1000
    for original, (prompt, chosen, rejected) in zip(originals, stored):
        # The transcript rebuilt from prompt + answer is the original (a lone space after an
        # empty final "Assistant:" is the only thing not kept).
        assert render_hh(prompt + chosen) == original["chosen"].rstrip(" ")
        assert render_hh(prompt + rejected) == original["rejected"].rstrip(" ")
        assert prompt[-1]["role"] == "user"
    # The messy rows are there: sides diverging before the last turn, and an empty preferred answer.
    assert sum(len(c) > 1 or len(r) > 1 for _, c, r in stored) >= 2
    assert store.scalar("SELECT count(*) FROM responses WHERE is_empty") >= 1


@pytest.mark.parametrize("fmt", ["conversational", "trl"])
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_export_then_import_gives_the_same_pairs(tmp_path, store, workspace, hh_file, fmt, suffix):
    import_file(store, hh_file, "hh")
    report = export_pairs(store, tmp_path / f"out{suffix}", "hh", fmt)
    assert (report.pairs, report.without_preference) == (1000, 0)
    from store import Store
    with Store(tmp_path / "other.duckdb") as other:
        back = import_file(other, report.path, "back")
        assert back.new_pairs == 1000 and back.errors == []
        assert ({r["id"] for r in other.query("SELECT id FROM pairs")}
                == {r["id"] for r in store.query("SELECT id FROM pairs")})


def test_exported_conversational_rows_are_what_trl_loads(tmp_path, store):
    import_file(store, write_jsonl(tmp_path / "p.jsonl", PAIRS[:1]), "d")
    export_pairs(store, tmp_path / "out.jsonl", "d")
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row == {"prompt": [{"role": "user", "content": "Question 0?"}],
                   "chosen": [{"role": "assistant", "content": "Good answer 0."}],
                   "rejected": [{"role": "assistant", "content": "Bad answer 0."}]}
    from trl.data_utils import is_conversational
    assert is_conversational(row)


# --- each file type -------------------------------------------------------------------------------

def test_each_file_type_imports_the_same_pairs(tmp_path, workspace):
    from store import Store
    write_jsonl(tmp_path / "a.jsonl", PAIRS)
    (tmp_path / "a.json").write_text(json.dumps(PAIRS, indent=2))
    with open(tmp_path / "a.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
        writer.writeheader()
        writer.writerows(PAIRS)
    pq.write_table(pa.Table.from_pylist(PAIRS), tmp_path / "a.parquet")
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in PAIRS))
    results = []
    for name in ("a.jsonl", "a.json", "a.csv", "a.parquet", "a.jsonl.gz"):
        with Store(tmp_path / f"{name}.duckdb") as s:
            assert import_file(s, tmp_path / name, "d").pairs == 5
            results.append(pair_texts(s))
    assert all(r == results[0] for r in results)


def test_conversational_pairs_in_csv_cells(tmp_path, store):
    path = tmp_path / "conv.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["chosen", "rejected"])
        writer.writerow([json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
                         json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bye"}])])
    assert import_file(store, path).pairs == 1


def test_prompt_only_files_import_prompts(tmp_path, store):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": "Summarize", "input": "a text"},
                                                    {"prompt": "Hello?"}])
    report = import_file(store, path, "prompts")
    assert (report.prompts_only, report.format) == (2, "prompts")
    assert store.stats()["prompts"] == 2 and store.stats()["pairs"] == 0


def test_reimport_adds_nothing_new(tmp_path, store):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    import_file(store, path, "d")
    again = import_file(store, path, "d")
    assert (again.pairs, again.new_pairs, again.new_prompts) == (5, 0, 0)
    assert store.stats()["pairs"] == 5


def test_imported_rows_have_the_ids_every_other_writer_gives_the_same_text(tmp_path, store):
    """An answer generated or labelled later must land on the row the import made for the same text."""
    from store.db import prompt_key, response_key
    rows = [{"prompt": [{"role": "system", "content": "Be brief \u2014 \"quoted\"\n"},
                        {"role": "user", "content": "Caf\u00e9? \U0001f600 \\ back"}],
             "chosen": [{"role": "assistant", "content": " spaced , [] {}"}],
             "rejected": [{"role": "assistant", "content": ""}]},
            {"prompt": "plain", "chosen": "a", "rejected": "b"}]
    import_file(store, write_jsonl(tmp_path / "u.jsonl", rows), "u")
    prompts = store.query("SELECT id, messages::VARCHAR AS m FROM prompts")
    responses = store.query("SELECT id, prompt_id, messages::VARCHAR AS m FROM responses")
    assert len(prompts) == 2 and len(responses) == 4
    assert all(p["id"] == prompt_key(json.loads(p["m"])) for p in prompts)
    assert all(r["id"] == response_key(r["prompt_id"], json.loads(r["m"])) for r in responses)


def test_a_pair_can_belong_to_several_datasets(tmp_path, store):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    import_file(store, path, "first")
    import_file(store, path, "second")
    assert store.stats()["pairs"] == 5
    assert store.scalar("SELECT count(*) FROM dataset_pairs") == 10


# --- bad input: all or nothing, with FILE:LINE: reason ----------------------------------------

def test_one_broken_line_imports_nothing_and_names_the_line(tmp_path, store):
    path = tmp_path / "broken.jsonl"
    lines = [json.dumps(r) for r in PAIRS]
    lines[2] = '{"prompt": "oops", "chosen": "a"'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportFailed) as failed:
        import_file(store, path, "d")
    assert [str(e) for e in failed.value.report.errors] == [
        f"{path}:3: not valid JSON: Expecting ',' delimiter (column 33)"
    ]
    assert store.stats() == {t: 0 for t in store.stats()}  # not even the dataset was created


def test_a_bad_row_after_committed_chunks_undoes_them_and_keeps_what_others_use(tmp_path, store):
    rows = [{"prompt": f"question {i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(2500)]
    import_file(store, write_jsonl(tmp_path / "some.jsonl", rows[:100]), "some")
    before = store.stats()
    path = write_jsonl(
        tmp_path / "all.jsonl", rows + [{"prompt": "q", "chosen": "a"}]
    )  # chunks of 1,000 are written first
    with pytest.raises(ImportFailed) as failed:
        import_file(store, path, "all")
    assert [str(e) for e in failed.value.report.errors] == [f"{path}:2501: missing column 'rejected'"]
    assert store.stats() == before and store.dataset_id("all") is None
    assert store.scalar("SELECT count(*) FROM dataset_pairs WHERE dataset_id = ?", [store.dataset_id("some")]) == 100
    assert store.scalar("SELECT count(*) FROM import_staging") == 0


def test_skip_bad_imports_the_good_rows_and_reports_the_rest(tmp_path, store):
    rows = [json.dumps(r) for r in PAIRS] + ['{"prompt": "q", "chosen": "same", "rejected": "same"}']
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(rows) + "\n")
    report = import_file(store, path, "d", skip_bad=True)
    assert report.pairs == 5 and report.written
    assert [str(e) for e in report.errors] == [f"{path}:6: chosen and rejected are identical"]


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}', "not valid UTF-8 (byte 0xe9 at column 16)"),
        (b'{"prompt": "", "chosen": "a", "rejected": "b"}', "empty prompt"),
        (b'{"prompt": "q", "chosen": "a"}', "missing column 'rejected'"),
        (b'{"prompt": "q", "chosen": "a", "rejected": "a"}', "chosen and rejected are identical"),
        (b'["not", "an", "object"]', "expected a JSON object, got list"),
        (
            b'{"prompt": "q", "chosen": "' + b"x" * 2000 + b'", "rejected": "b"}',
            "row is 2,046 bytes, over the 1,000-byte limit",
        ),
    ],
)
def test_each_bad_input_reason(tmp_path, store, line, reason):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(PAIRS[0]).encode() + b"\n" + line + b"\n")
    with pytest.raises(ImportFailed) as failed:
        import_file(store, path, "d", max_row_bytes=1000)
    assert [str(e) for e in failed.value.report.errors] == [f"{path}:2: {reason}"]
    assert store.stats()["pairs"] == 0


def test_an_empty_response_is_kept_and_flagged(tmp_path, store):
    path = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "Insult me", "chosen": "", "rejected": "You fool"}])
    report = import_file(store, path, "d")
    assert report.empty_responses == 1
    assert store.scalar("SELECT count(*) FROM responses WHERE is_empty") == 1


def test_csv_missing_column_and_bad_cells(tmp_path, store):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,chosen\nq,a\n")
    with pytest.raises(ImportFailed) as failed:
        import_file(store, path, "d")
    assert [str(e) for e in failed.value.report.errors] == [f"{path}:2: missing column 'rejected'"]
    path.write_text("prompt,chosen,rejected\nq,a,b,extra\n")
    with pytest.raises(ImportFailed, match="nothing imported") as failed:
        import_file(store, path, "d")
    assert str(failed.value.report.errors[0]) == f"{path}:2: 4 cells, header has 3"


def test_json_array_errors_name_their_line(tmp_path, store):
    path = tmp_path / "a.json"
    path.write_text('[\n  {"prompt": "q", "chosen": "a", "rejected": "b"},\n  {"prompt": "q2", "chosen": "a"}\n]\n')
    with pytest.raises(ImportFailed) as failed:
        import_file(store, path, "d")
    assert [str(e) for e in failed.value.report.errors] == [f"{path}:3: missing column 'rejected'"]


@pytest.mark.parametrize("name, content, reason", [
    ("data.txt", b"hello", "unknown file type"),
    ("empty.jsonl", b"", "no rows to import"),
    ("junk.parquet", b"not parquet at all", "not a readable Parquet file"),
])
def test_unusable_files(tmp_path, store, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImportFailed) as failed:
        import_file(store, path, "d")
    assert reason in str(failed.value.report.errors[0])
    assert store.stats()["datasets"] == 0


def test_a_store_that_outgrows_the_imports_cache_still_takes_every_pair(tmp_path, monkeypatch):
    """DuckDB's indexes cannot spill to disk, so an import's memory limit grows with the rows
    stored. Scaled down: with a 16 MB cache, 60,000 pairs import whole (a fixed 16 MB limit ran out
    of memory partway: the same failure a fixed 128 MB had at about 400,000 pairs)."""
    import store.imports as imports

    monkeypatch.setattr(imports, "IMPORT_CACHE_BYTES", 16 * 2 ** 20)
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i} " + "x" * 50, "chosen": f"yes {i}",
                                        "rejected": f"no {i}"}) + "\n" for i in range(60_000)))
    store = Store(tmp_path / "ws.duckdb")
    report = import_file(store, path, "many")
    assert report.new_pairs == 60_000 and store.scalar("SELECT count(*) FROM dataset_pairs") == 60_000
    first = store.query(
        "SELECT p.messages FROM pairs JOIN prompts p ON p.id = pairs.prompt_id ORDER BY pairs.rowid LIMIT 1"
    )
    assert "question 0 " in first[0]["messages"]  # stored in file order


def test_an_import_of_repeated_pairs_says_how_many_were_repeats(store, tmp_path):
    from store import import_file

    path = tmp_path / "same.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}) + "\n" * 1
                    + "".join(json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}) + "\n"
                              for _ in range(299)))
    report = import_file(store, path, "same")
    assert (report.pairs, report.new_pairs) == (300, 1)
    assert "299 of the pairs were repeats of rows above or stored already" in report.summary()
    assert store.scalar("SELECT count(*) FROM dataset_pairs") == 1
