"""Damaged, odd and hostile files (issue 17 B): each is refused with FILE:LINE and a reason, or
imported right; with --skip-bad every row of the file is either imported or reported."""

import csv
import gzip
import io
import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store import ImportFailed, import_file


def pair(i: int) -> dict:
    return {"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."}


def jsonl_bytes(n: int) -> bytes:
    return "".join(json.dumps(pair(i)) + "\n" for i in range(n)).encode()


def errors_of(call) -> list[str]:
    with pytest.raises(ImportFailed) as failed:
        call()
    return [str(e) for e in failed.value.report.errors]


def prompts(store) -> list[str]:
    return [json.loads(r["m"])[0]["content"] for r in store.query("SELECT messages::VARCHAR AS m FROM prompts ORDER BY rowid")]


def test_a_truncated_gzip_names_where_it_ends_and_skip_bad_keeps_the_rows_before(tmp_path, store):
    whole = gzip.compress(jsonl_bytes(1000))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) * 6 // 10])
    errors = errors_of(lambda: import_file(store, path, "d"))
    assert len(errors) == 1 and errors[0].startswith(f"{path}:") and "the gzip stream ends early" in errors[0]
    assert store.stats()["pairs"] == 0
    report = import_file(store, path, "d", skip_bad=True)
    damaged_line = int(str(report.errors[0]).split(":")[1])
    assert report.pairs == damaged_line - 1 > 100  # every row before the damage, none after
    assert report.rows == report.pairs + 1 and store.stats()["pairs"] == report.pairs


def test_plain_text_named_gz_is_not_a_gzip_file(tmp_path, store):
    path = tmp_path / "plain.jsonl.gz"
    path.write_bytes(jsonl_bytes(3))
    assert errors_of(lambda: import_file(store, path, "d")) == [f"{path}:1: not a gzip file (the name ends in .gz)"]


def test_deep_nesting_is_a_row_error_not_a_crash(tmp_path, store):
    lines = [json.dumps(pair(0)), '{"prompt": "q", "chosen": "a", "rejected": "b", "unused": ' + "[" * 2000 + "]" * 2000 + "}",
             json.dumps(pair(2))]
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = import_file(store, path, "d", skip_bad=True)
    assert report.pairs == 2 and [str(e) for e in report.errors] == [f"{path}:2: JSON nested too deeply to read (over about 900 levels)"]
    array = tmp_path / "deep.json"
    array.write_text("[" + json.dumps(pair(0)) + ",\n" + "[" * 100_000 + "]" * 100_000 + "]")
    report = import_file(store, array, "e", skip_bad=True)
    assert report.pairs == 1 and "nested too deeply" in str(report.errors[0]) and ":2:" in str(report.errors[0])


def test_a_parquet_file_damaged_in_the_middle_fails_only_the_damaged_rows(tmp_path, store):
    path = tmp_path / "damaged.parquet"
    rows = [{**pair(i), "prompt": f"Question {i}? " + "x" * 50} for i in range(3000)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000, compression="snappy")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 400] = b"\xab" * 400  # inside the second row group; the footer is intact
    path.write_bytes(bytes(data))
    errors = errors_of(lambda: import_file(store, path, "d"))
    assert len(errors) == 1000 and errors[0].startswith(f"{path}:1001: in a damaged part of the file (row group 2")
    report = import_file(store, path, "d", skip_bad=True)
    assert (report.rows, report.pairs, len(report.errors)) == (3000, 2000, 1000)


def test_an_excel_csv_with_a_byte_order_mark_keeps_its_prompt_column(tmp_path, store):
    path = tmp_path / "excel.csv"
    path.write_bytes("prompt,chosen,rejected\r\nWhat is 2+2?,The answer is 4.,The answer is 5.\r\n".encode("utf-8-sig"))
    import_file(store, path, "d")
    assert prompts(store) == ["What is 2+2?"]


def test_a_bom_in_jsonl_and_json_is_ignored(tmp_path, store):
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + jsonl_bytes(2))
    (tmp_path / "b.json").write_bytes(b"\xef\xbb\xbf" + b" " * 100 + json.dumps([pair(5)]).encode())
    assert import_file(store, tmp_path / "b.jsonl", "d").pairs == 2
    assert import_file(store, tmp_path / "b.json", "e").pairs == 1  # an array after 100 spaces


def csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["prompt", "chosen", "rejected"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def test_a_legal_200_kb_cell_imports(tmp_path, store):
    path = tmp_path / "big.csv"
    path.write_text(csv_text([pair(0), {**pair(1), "chosen": "long " * 40_000}, pair(2)]))
    assert import_file(store, path, "d").pairs == 3


def test_skip_bad_never_drops_a_csv_row_without_reporting_it(tmp_path, store):
    text = csv_text([pair(i) for i in range(6)]).encode()
    lines = text.split(b"\r\n")
    lines[3] = lines[3].replace(b"Question 2", b"Quest\xe9on 2")  # a Latin-1 byte in row 3 of 6
    path = tmp_path / "latin.csv"
    path.write_bytes(b"\r\n".join(lines))
    report = import_file(store, path, "d", skip_bad=True)
    assert (report.rows, report.pairs) == (6, 5)
    assert [str(e) for e in report.errors] == [f"{path}:4: not valid UTF-8 (byte 0xe9 in a cell)"]
    assert prompts(store) == [f"Question {i}?" for i in (0, 1, 3, 4, 5)]
    over = tmp_path / "over.csv"  # a cell over the row limit fails its row only
    over.write_text(csv_text([pair(0), {**pair(1), "chosen": "x" * 3000}, pair(2)]))
    report = import_file(store, over, "e", skip_bad=True, max_row_bytes=1000)
    assert (report.rows, report.pairs, len(report.errors)) == (3, 2, 1) and ":3: row is" in str(report.errors[0])


def test_an_unclosed_quote_is_an_error_not_one_huge_prompt(tmp_path, store):
    path = tmp_path / "quote.csv"
    path.write_text('prompt,chosen,rejected\nQ1,a,b\n"Q2 opens a quote,a,b\nQ3,a,b\nQ4,a,b\n')
    errors = errors_of(lambda: import_file(store, path, "d"))
    assert errors == [f"{path}:3: a quoted cell opened here is never closed; it runs to the end of the file"]
    prompt_file = tmp_path / "prompts.csv"
    prompt_file.write_text('prompt\n"Unclosed\nSecond\n')
    assert "never closed" in errors_of(lambda: import_file(store, prompt_file, "p"))[0]


def test_a_folder_and_a_bad_row_limit_are_refused_clearly(tmp_path, store):
    assert errors_of(lambda: import_file(store, tmp_path, "d")) == [f"{tmp_path}:0: is a folder, not a file"]
    path = tmp_path / "ok.jsonl"
    path.write_bytes(jsonl_bytes(1))
    with pytest.raises(ValueError, match="positive"):
        import_file(store, path, "d", max_row_bytes=-5)


def test_a_gzip_bomb_is_stopped_while_it_decompresses(tmp_path, store):
    path = tmp_path / "bomb.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(jsonl_bytes(1))
        f.write(b'{"prompt": "' + b"a" * 100_000_000 + b'"}\n')  # one 100 MB line, 100 KB packed
        f.write(jsonl_bytes(2))
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    report = import_file(store, path, "d", skip_bad=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.pairs == 3 and [str(e) for e in report.errors] == [
        f"{path}:2: row is 100,000,014 bytes, over the 1,000,000-byte limit"]
    assert peak < 50_000_000  # the line was never held whole
