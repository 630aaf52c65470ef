"""Damaged, odd and hostile files (issue 17 B): each is refused with FILE:LINE and a reason, or
imported right; with --skip-bad every row of the file is either imported or reported."""

import csv
import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store import ImportFailed, Store, export_pairs, import_file
from store.db import BadName, check_dataset_name

from helpers import ALIGNSTUDIO, cli


def pair(i: int) -> dict:
    return {"prompt": f"Question {i}?", "chosen": f"Good answer {i}.", "rejected": f"Bad answer {i}."}


def jsonl_bytes(n: int) -> bytes:
    return "".join(json.dumps(pair(i)) + "\n" for i in range(n)).encode()


def errors_of(call) -> list[str]:
    with pytest.raises(ImportFailed) as failed:
        call()
    return [str(e) for e in failed.value.report.errors]


def prompts(store) -> list[str]:
    return [
        json.loads(r["m"])[0]["content"]
        for r in store.query("SELECT messages::VARCHAR AS m FROM prompts ORDER BY rowid")
    ]


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
    lines = [
        json.dumps(pair(0)),
        '{"prompt": "q", "chosen": "a", "rejected": "b", "unused": ' + "[" * 2000 + "]" * 2000 + "}",
        json.dumps(pair(2)),
    ]
    path = tmp_path / "deep.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = import_file(store, path, "d", skip_bad=True)
    assert report.pairs == 2 and [str(e) for e in report.errors] == [
        f"{path}:2: JSON nested too deeply to read (over about 900 levels)"
    ]
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


# --- the workspace and the command line ---------------------------------------------------------




def one_error_line(result) -> str:
    """The command failed with one line of error and no traceback."""
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_a_workspace_database_cut_short_is_called_damaged_not_healthy(tmp_path):
    ws = tmp_path / "ws"
    with Store(ws / "studio.duckdb") as store:
        path = tmp_path / "many.jsonl"
        path.write_text("".join(json.dumps({**pair(i), "chosen": "long " * 300 + str(i)}) + "\n" for i in range(3000)))
        import_file(store, path, "many")
    db = ws / "studio.duckdb"
    os.truncate(db, db.stat().st_size // 2)
    for command in (["stats"], ["datasets"], ["export", "--out", tmp_path / "x.jsonl"], ["import", path]):
        line = one_error_line(cli(*command, workspace=ws, check=False))
        assert "the workspace database is damaged" in line and "Restore studio.duckdb from a backup" in line
    assert not (tmp_path / "x.jsonl").exists()


def test_odd_workspace_paths_get_a_sentence(tmp_path):
    (tmp_path / "afile").write_text("x")
    assert "is a file, not a workspace folder" in one_error_line(
        cli("stats", workspace=tmp_path / "afile", check=False)
    )
    (tmp_path / "ws" / "studio.duckdb").mkdir(parents=True)
    assert "is a folder, not a workspace database" in one_error_line(
        cli("stats", workspace=tmp_path / "ws", check=False)
    )


def test_bad_command_line_values_and_export_targets(tmp_path):
    ws = tmp_path / "ws"
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl_bytes(3))
    assert "must be a positive number, not -5" in one_error_line(
        cli("import", data, "--max-row-bytes", "-5", workspace=ws, check=False)
    )
    assert "is a folder, not a file" in cli("import", tmp_path, workspace=ws, check=False).stderr
    cli("import", data, "--dataset", "d", workspace=ws, check=False)
    (tmp_path / "a-file").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    for out, reason in ((tmp_path, "is a folder"), (tmp_path / "a-file" / "x.jsonl", "cannot write the export"),
                        (locked / "x.jsonl", "cannot write the export")):
        if reason.startswith("cannot") and out.parent == locked and os.geteuid() == 0:
            continue  # root writes anywhere
        assert reason in one_error_line(cli("export", "--out", out, workspace=ws, check=False))
    assert not list(tmp_path.glob("**/*.partial"))


def test_a_full_disk_during_export_writes_nothing(tmp_path, store):
    import resource
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl_bytes(200))
    import_file(store, data, "d")
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, old[1]))
    try:
        with pytest.raises(Exception, match="cannot write the export .*nothing was written"):
            export_pairs(store, tmp_path / "out.jsonl", "d")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, previous)
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.partial").exists()


@pytest.mark.parametrize("name, reason", [
    ("   ", "give the dataset a name"), ("\t\n", "give the dataset a name"), ("x" * 10_000, "at most 80 characters"),
    ("a\tb", "control characters"), ("a\nb", "control characters"), ("---", "needs a letter or a digit"),
    ("arena", "the studio's own dataset"), ("Demo-Prompts", "the studio's own dataset"),
])
def test_dataset_names_follow_rules(tmp_path, store, name, reason):
    with pytest.raises(BadName, match=reason):
        check_dataset_name(name)
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl_bytes(1))
    with pytest.raises(BadName, match=reason):  # a name given blank too (no name at all: the file's)
        import_file(store, data, name)
    assert store.stats()["datasets"] == 0
    assert check_dataset_name(" données v2 ") == "données v2"


def test_the_port_in_use_is_a_sentence(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error_line(cli("serve", "--port", port, workspace=tmp_path / "ws", check=False))
    assert f"cannot serve on 127.0.0.1:{port}" in line and "pass --port" in line


# The CLI in a child whose import says when its first chunk is written and then writes slowly, so
# that Ctrl-C lands mid-import on a loaded machine too (waiting on file sizes raced the commit).
# Ctrl-C as a terminal gives it: a shell that starts a command in the background (nohup, `&`) has
# it ignore SIGINT, and the test's child would inherit that.
CTRL_C_CHILD = """
import signal, sys, time
from pathlib import Path
import store.imports
from studio.cli import main
signal.signal(signal.SIGINT, signal.default_int_handler)
write = store.imports._Batch.write
def write_and_say(self, *args):
    write(self, *args)
    Path(sys.argv[1]).touch()
    time.sleep(0.5)
store.imports._Batch.write = write_and_say
sys.exit(main(sys.argv[2:]))
"""


def test_ctrl_c_during_an_import_says_nothing_was_written(tmp_path):
    ws, data, writing = tmp_path / "ws", tmp_path / "big.jsonl", tmp_path / "writing"
    data.write_bytes(jsonl_bytes(100_000))
    child = subprocess.Popen([sys.executable, "-c", CTRL_C_CHILD, str(writing), "import", str(data), "--workspace",
                              str(ws)], stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    deadline = time.time() + 300
    while time.time() < deadline and not writing.exists() and child.poll() is None:
        time.sleep(0.02)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130 and "import cancelled; nothing was written" in err and "Traceback" not in err, err
    with Store(ws / "studio.duckdb", read_only=True) as store:
        assert store.stats()["datasets"] == 0 and store.stats()["pairs"] == 0


def test_the_login_page_says_nothing_about_the_workspace(tmp_path):
    import urllib.request
    ws, data = tmp_path / "ws", tmp_path / "d.jsonl"
    data.write_bytes(jsonl_bytes(2))
    assert cli("import", data, "--dataset", "secret-project-x", workspace=ws, check=False).returncode == 0
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    server = subprocess.Popen([ALIGNSTUDIO, "serve", "--workspace", str(ws), "--port", str(port), "--auth", "u:pw"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the server did not start")
        assert '"auth_required":true' in page
        assert "secret-project-x" not in page and '"named_endpoints":{}' in page
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_each_dataset_gets_its_own_export_file(workspace):
    from studio.data_tab import export_path

    names = ["x", "../x", "_x", "x/", "données", "数据", "a b", "a_b"]
    files = {export_path(workspace, name, "conversational", ".jsonl") for name in names}
    assert len(files) == len(names) and all(f.parent == workspace.exports_dir for f in files)
    assert export_path(workspace, "données", "trl", ".jsonl").name == "données-trl.jsonl"  # letters of any script kept
