"""Import preference pairs and prompts from JSONL, JSON, CSV or Parquet (optionally gzipped).

All or nothing: by default any bad row aborts an import and nothing is written; with `skip_bad`
the good rows are written and the bad ones reported. Rows are read and committed in chunks (see
`import_file`), so a large JSONL, CSV or Parquet file streams instead of being held in memory; a
JSON array is read whole (parsed element by element), so large files are better as JSONL.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from common.errors import StudioError
from store import search as search_index
from store.db import (
    Store,
    StoreError,
    canonical_json,
    check_dataset_name,
    content_hash,
    create_dataset,
    discard_import,
    fetch_one,
    is_empty_response,
    prompt_key_of_json,
    response_key_of_json,
)
from store.formats import FORMATS, PARSERS, BadRecord, PairRecord, PromptRecord, detect_format

DEFAULT_MAX_ROW_BYTES = 1_000_000
BATCH_ROWS = 10_000              # prompts + pairs per committed chunk: 5,000 pairs (each commit costs ~16 ms)
MB = 2 ** 20
IMPORT_CACHE_BYTES = 128 * MB    # DuckDB's cache of written blocks while an import writes: it spills beyond it
INDEX_BYTES_PER_ROW = 100        # what a stored row's key takes in DuckDB's indexes, which cannot spill
INDEXED_ROWS = ("SELECT (SELECT count(*) FROM prompts) + (SELECT count(*) FROM responses) + "
                "(SELECT count(*) FROM pairs) + (SELECT count(*) FROM dataset_pairs) + "
                "(SELECT count(*) FROM dataset_prompts)")


def import_memory_limit(store: Store) -> str:
    """DuckDB's memory limit for the next chunk of an import: a fixed cache, so that a long import
    stays flat, plus what the indexes of the rows stored so far (and this chunk's) need. A fixed
    128 MB ran out at about 400,000 pairs."""
    rows = store.scalar(INDEXED_ROWS) + 3 * BATCH_ROWS
    return f"{(IMPORT_CACHE_BYTES + INDEX_BYTES_PER_ROW * rows) // MB}MB"


@dataclass
class RowError:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class ImportReport:
    file: str
    dataset: str
    format: str = "auto"
    rows: int = 0
    pairs: int = 0                 # good pair rows in the file
    prompts_only: int = 0          # good prompt-only rows in the file
    empty_responses: int = 0       # responses with no text (kept, flagged in the store)
    new_pairs: int = 0
    new_prompts: int = 0
    new_responses: int = 0
    errors: list[RowError] = field(default_factory=list)
    written: bool = False

    def summary(self) -> str:
        kept = f"{self.pairs} pairs" if self.pairs or not self.prompts_only else ""
        if self.prompts_only:
            what = "demonstrations" if self.format == "demonstrations" else "prompts"
            kept += (", " if kept else "") + f"{self.prompts_only} {what}"
        if not self.written:
            if not self.rows and self.errors:  # the file as a whole: say why
                return f"{self.file}: nothing imported ({self.errors[0].reason})"
            return f"{self.file}: nothing imported ({len(self.errors)} bad rows of {self.rows})"
        repeated = self.pairs - self.new_pairs
        known = (f"; {repeated:,} of the pairs were repeats of rows above or stored already, so the store holds "
                 "each once" if repeated else "")
        return (f"{self.file}: imported {kept} into dataset '{self.dataset}' as {self.format} "
                f"({self.new_pairs} new pairs, {self.new_prompts} new prompts, "
                f"{self.new_responses} new responses; {self.empty_responses} empty responses kept; "
                f"{len(self.errors)} bad rows skipped{known})")

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["errors"] = [str(e) for e in self.errors]
        return d


class ImportFailed(StudioError):
    """Raised when an import writes nothing; carries the report with every bad row."""

    def __init__(self, report: ImportReport):
        super().__init__(report.summary())
        self.report = report


# --- readers: yield (line, record | BadRecord) ------------------------------------------------

DAMAGED_TAIL = "nothing after it could be read"


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def _kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    for suffix, kind in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"),
                         (".csv", "csv"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return kind
    raise BadRecord("unknown file type: expected .jsonl, .json, .csv or .parquet (optionally .gz)")


def _as_object(value: object) -> dict:
    if not isinstance(value, dict):
        raise BadRecord(f"expected a JSON object, got {type(value).__name__}")
    return value


def _json_value(text: str) -> object:
    try:
        return _valid_unicode(json.loads(text), text)
    except json.JSONDecodeError as e:
        raise BadRecord(f"not valid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise BadRecord("JSON nested too deeply to read (over about 900 levels)") from None


def _valid_unicode(value: object, text: str) -> object:
    """JSON's escapes can spell half of a UTF-16 pair (`"\\ud800"`), text no file or store can hold."""
    if "\\u" in text:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRecord("text is not valid Unicode (a lone surrogate)") from None
    return value


class _Damaged(Exception):
    """The file cannot be read past this point (a damaged gzip stream, a broken Parquet page)."""


def _stream_damage(error: Exception) -> str:
    if isinstance(error, EOFError):
        return f"the gzip stream ends early; {DAMAGED_TAIL}"
    if isinstance(error, gzip.BadGzipFile):
        return "not a gzip file (the name ends in .gz)"
    return f"the compressed data is damaged ({error}); {DAMAGED_TAIL}"


class _Lines:
    """The file's physical lines as bytes, numbered in `line`. A line over the row limit is
    skipped while it is read (so one huge line, say from a gzip bomb, never sits in memory) and
    comes out as a BadRecord; damage to the stream raises `_Damaged` with the reason."""

    def __init__(self, f, max_row_bytes: int):
        self.f, self.max_row_bytes, self.line = f, max_row_bytes, 0

    def _read(self, limit: int) -> bytes:
        try:
            return self.f.readline(limit)
        except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise _Damaged(_stream_damage(e)) from None

    def __iter__(self) -> Iterator[bytes | BadRecord]:
        while raw := self._read(self.max_row_bytes + 2):  # room for "\r\n"
            self.line += 1
            if self.line == 1 and raw.startswith(codecs.BOM_UTF8):  # Excel's "CSV UTF-8" and others
                raw = raw[len(codecs.BOM_UTF8):]
            size = len(raw.rstrip(b"\r\n"))
            while not raw.endswith(b"\n") and size > self.max_row_bytes:  # drain the rest of the line
                raw = self._read(1 << 20)
                if not raw:
                    break
                size += len(raw.rstrip(b"\r\n"))
            if size > self.max_row_bytes:
                yield BadRecord(f"row is {size:,} bytes, over the {self.max_row_bytes:,}-byte limit")
            else:
                yield raw


def _jsonl(lines: _Lines) -> Iterator[tuple[int, dict | BadRecord]]:
    for raw in lines:
        if isinstance(raw, BadRecord):
            yield lines.line, raw
        elif raw.strip():
            try:
                yield lines.line, _as_object(_json_value(_decode(raw.rstrip(b"\r\n"))))
            except BadRecord as e:
                yield lines.line, e


def _json_array(data: bytes, max_row_bytes: int) -> Iterator[tuple[int, dict | BadRecord]]:
    """A JSON array is parsed element by element so each error can name its line."""
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        yield data.count(b"\n", 0, e.start) + 1, BadRecord(f"not valid UTF-8 (byte 0x{data[e.start]:02x})")
        return
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        line = text.count("\n", 0, pos) + 1
        if pos >= len(text):
            yield line, BadRecord("not valid JSON: the array is not closed")
            return
        if text[pos] == "]":
            return
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            yield text.count("\n", 0, e.pos) + 1, BadRecord(f"not valid JSON: {e.msg}")
            return
        except RecursionError:  # the element's end is unknown: nothing after it can be read
            yield line, BadRecord(f"JSON nested too deeply to read (over about 900 levels); {DAMAGED_TAIL}")
            return
        if end - pos > max_row_bytes:
            yield line, BadRecord(f"row is {end - pos:,} bytes, over the {max_row_bytes:,}-byte limit")
        else:
            try:
                yield line, _as_object(_valid_unicode(value, text[pos:end]))
            except BadRecord as e:
                yield line, e
        pos = end


def _read_whole(f) -> tuple[bytes, str | None]:
    """All of a file, or what could be read of it and why the rest could not."""
    chunks = []
    try:
        while chunk := f.read(1 << 20):
            chunks.append(chunk)
    except (EOFError, OSError, zlib.error) as e:
        return b"".join(chunks), _stream_damage(e)
    return b"".join(chunks), None


def _csv(lines: _Lines, max_row_bytes: int) -> Iterator[tuple[int, dict | BadRecord]]:
    """CSV cells are text; a cell holding a JSON list (a conversation) is decoded.

    Every row is accounted for: a row that cannot be read is reported and the reader goes on
    from the next line (csv's strict mode resynchronises there), so `skip_bad` drops nothing
    silently. Bytes that are not UTF-8 fail only the row they are in."""
    pending: list[tuple[int, BadRecord]] = []  # over-long lines, reported beside the rows

    def text_lines() -> Iterator[str]:
        for raw in lines:
            if isinstance(raw, BadRecord):
                pending.append((lines.line, raw))
                yield "\n"  # an empty row, which the reader skips
            else:
                yield raw.decode("utf-8", errors="surrogateescape")

    # A legal cell may be as long as a row may be (Python's csv stops at 128 KiB by default).
    csv.field_size_limit(max(csv.field_size_limit(), max_row_bytes + 1))
    reader = csv.reader(text_lines(), strict=True)
    header = None
    while True:
        start = lines.line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            reason = ("a quoted cell opened here is never closed; it runs to the end of the file"
                      if "unexpected end of data" in str(e) else f"not valid CSV: {e}")
            yield start, BadRecord(reason)
            continue
        finally:
            yield from pending
            pending.clear()
        if not row:
            continue
        undecodable = next((cell for cell in row if _has_bad_bytes(cell)), None)
        if undecodable is not None:
            yield start, _bad_bytes(undecodable)
            continue
        if header is None:
            header = row
            continue
        if len(row) != len(header):
            yield start, BadRecord(f"{len(row)} cells, header has {len(header)}")
            continue
        size = sum(len(v) for v in row)
        if size > max_row_bytes:
            yield start, BadRecord(f"row is {size:,} bytes, over the {max_row_bytes:,}-byte limit")
            continue
        record = {}
        for key, value in zip(header, row):
            if value.startswith("[{"):
                try:
                    value = json.loads(value)
                except (json.JSONDecodeError, RecursionError):
                    pass
            record[key] = value
        yield start, record
    if header is None:
        yield 1, BadRecord("empty file: no header row")


def _has_bad_bytes(cell: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in cell)


def _bad_bytes(cell: str) -> BadRecord:
    column = next(i for i, ch in enumerate(cell) if "\udc80" <= ch <= "\udcff")
    return BadRecord(f"not valid UTF-8 (byte 0x{ord(cell[column]) - 0xdc00:02x} in a cell)")


def _parquet(path: Path, max_row_bytes: int) -> Iterator[tuple[int, dict | BadRecord]]:
    """Row group by row group, so that damage in one (a bad page) fails only its own rows."""
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        yield 1, BadRecord(f"not a readable Parquet file: {_first_line(e)}")
        return
    line = 0
    for group in range(parquet.num_row_groups):
        try:
            batches = parquet.read_row_group(group).to_batches(BATCH_ROWS)
        except (pa.ArrowException, OSError) as e:
            damaged = parquet.metadata.row_group(group).num_rows
            reason = f"in a damaged part of the file (row group {group + 1}: {_first_line(e)})"
            for bad_line in range(line + 1, line + damaged + 1):
                yield bad_line, BadRecord(reason)
            line += damaged
            continue
        for batch in batches:
            for record in batch.to_pylist():
                line += 1
                try:
                    size = len(json.dumps(record, default=str))
                except RecursionError:
                    yield line, BadRecord("nested too deeply to read")
                    continue
                if size > max_row_bytes:
                    yield line, BadRecord(f"row is {size:,} bytes, over the {max_row_bytes:,}-byte limit")
                else:
                    yield line, record


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def read_records(path: Path, max_row_bytes: int = DEFAULT_MAX_ROW_BYTES) -> Iterator[tuple[int, dict | BadRecord]]:
    """Every row of the file with its line (row, for Parquet) number, or the reason it is bad."""
    kind = _kind(path)
    if kind == "parquet":
        yield from _parquet(path, max_row_bytes)
        return
    with _open(path) as f:
        lines = _Lines(f, max_row_bytes)
        try:
            if kind == "json":
                data, damage = _read_whole(f)
                if data.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):
                    records = list(_json_array(data, max_row_bytes))
                    if damage:  # what was read ends early: say why, not "the array is not closed"
                        if isinstance(records[-1][1], BadRecord):
                            records.pop()
                        records.append((data.count(b"\n") + 1, BadRecord(damage)))
                    yield from records
                    return
                if damage:
                    raise _Damaged(damage)
                lines = _Lines(io.BytesIO(data), max_row_bytes)
            yield from (_csv(lines, max_row_bytes) if kind == "csv" else _jsonl(lines))
        except _Damaged as e:
            yield lines.line + 1, BadRecord(str(e))


# --- writing ------------------------------------------------------------------------------------

class _Batch:
    """Rows of one chunk, keyed by content hash so duplicates inside the file collapse."""

    def __init__(self, source: str):
        self.source = source
        self.clear()

    def clear(self) -> None:
        self.prompts: dict[str, str] = {}
        self.responses: dict[str, tuple] = {}
        self.pairs: dict[str, tuple] = {}

    def __len__(self) -> int:
        return len(self.prompts) + len(self.pairs)

    def _prompt(self, messages: list[dict]) -> str:
        text = canonical_json(messages)  # stored as it is hashed: encoded once
        pid = prompt_key_of_json(text)
        self.prompts[pid] = text
        return pid

    def _response(self, prompt_id: str, messages: list[dict]) -> str:
        text = canonical_json(messages)
        rid = response_key_of_json(prompt_id, text)
        self.responses[rid] = (prompt_id, text, is_empty_response(messages))
        return rid

    def add(self, item: PairRecord | PromptRecord) -> None:
        pid = self._prompt(item.prompt)
        if isinstance(item, PairRecord):
            first, second = self._response(pid, item.chosen), self._response(pid, item.rejected)
            self.pairs[content_hash("pair", pid, first, second)] = (pid, first, second)
        elif item.reference:
            self._response(pid, item.reference)

    def write(self, store: Store, import_id: str, report: ImportReport) -> None:
        """Commit this chunk's new rows and stage its ids under `import_id` (one transaction)."""
        if not self:
            return
        store.set_memory_limit(import_memory_limit(store))  # the indexes grow with every chunk
        tables = {
            "prompts": {"id": list(self.prompts), "messages": list(self.prompts.values())},
            "responses": {"id": list(self.responses),
                          "prompt_id": [r[0] for r in self.responses.values()],
                          "messages": [r[1] for r in self.responses.values()],
                          "is_empty": [r[2] for r in self.responses.values()],
                          "source": [self.source] * len(self.responses)},
            "pairs": {"id": list(self.pairs),
                      "prompt_id": [p[0] for p in self.pairs.values()],
                      "first_id": [p[1] for p in self.pairs.values()],
                      "second_id": [p[2] for p in self.pairs.values()],
                      "source_verdict": ["first"] * len(self.pairs),
                      "source": [self.source] * len(self.pairs)},
        }
        with store.transaction() as cur:
            for name, columns in tables.items():
                # Which of the chunk's ids are stored already: a semi-join that hashes the chunk's
                # ids and scans the table's (hashing the table's, as NOT IN (SELECT ...) does, needs
                # memory that grows with the store: at 400,000 pairs it no longer fit the import's cap).
                cur.register("chunk_ids", pa.table({"id": columns["id"]}))
                stored = {r[0] for r in cur.execute(
                    f"SELECT id FROM {name} WHERE id IN (SELECT id FROM chunk_ids)").fetchall()}
                cur.unregister("chunk_ids")
                keep = [i for i, row_id in enumerate(columns["id"]) if row_id not in stored]
                new = {columns["id"][i] for i in keep}
                if keep:
                    # Plain INSERT of the rows not yet stored, in file order (INSERT OR IGNORE would
                    # scramble the order, and exports follow it).
                    cur.register("chunk", pa.table({c: [values[i] for i in keep] for c, values in columns.items()}))
                    names = ", ".join(columns)
                    cur.execute(f"INSERT INTO {name} ({names}) SELECT {names} FROM chunk")
                    cur.unregister("chunk")
                setattr(report, f"new_{name}", getattr(report, f"new_{name}") + len(new))
                # Responses are staged only to be removed again; prompts and pairs also to be linked.
                ids = list(new) if name == "responses" else columns["id"]
                cur.register("staged", pa.table({"id": ids, "is_new": [i in new for i in ids]}))
                cur.execute("INSERT INTO import_staging SELECT ?, ?, id, is_new FROM staged", [import_id, name])
                cur.unregister("staged")
        self.clear()


def prompt_subset(store: Store, name: str, source: str, offset: int, limit: int) -> int:
    """A dataset `name` of the prompts number offset+1 .. offset+limit of the dataset `source` (in the
    order they were stored), made once; its prompt count."""
    made = store.dataset_id(name) is None
    with store.transaction() as cur:
        dataset_id = ensure_dataset(cur, name, {"source": source, "offset": offset, "limit": limit}, internal=True)
        if made:
            cur.execute("""INSERT INTO dataset_prompts SELECT ?, id FROM prompts
                           WHERE id IN (SELECT prompt_id FROM dataset_prompts WHERE dataset_id =
                                        (SELECT id FROM datasets WHERE name = ?))
                           ORDER BY rowid LIMIT ? OFFSET ?""", [dataset_id, source, limit, offset])
        return fetch_one(cur, "SELECT count(*) FROM dataset_prompts WHERE dataset_id = ?", [dataset_id])[0]


def ensure_dataset(cur, name: str, recipe: dict, internal: bool = False) -> int:
    """The id of dataset `name`, created with `recipe` when missing (inside the caller's transaction);
    a new name must pass `check_dataset_name` (`internal`: the studio's own, reserved names)."""
    row = fetch_one(cur, "SELECT id FROM datasets WHERE name = ?", [name])
    return row[0] if row else create_dataset(cur, name, recipe, internal)


def import_file(
    store: Store,
    path: str | Path,
    dataset: str | None = None,
    fmt: str = "auto",
    skip_bad: bool = False,
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES,
    internal: bool = False,
) -> ImportReport:
    """Import one file into `dataset` (default: the file's name). Raises ImportFailed if nothing
    was written: bad rows without `skip_bad`, or no usable row at all. `internal`: the studio's
    own import of its assets, which may use the names it reserves.

    The rows are committed in chunks as the file is read, so memory stays flat however large the
    file; the dataset shows them only once the whole file is in (one last small transaction), and
    an import that fails, or whose process dies, has its new rows removed again."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if dataset is not None and not dataset.strip():
        check_dataset_name(dataset)  # a name given blank is refused; None means the file's name
    dataset = (dataset or "").strip() or path.name.split(".")[0]
    if store.dataset_id(dataset) is None:
        check_dataset_name(dataset, internal)
    report = ImportReport(file=str(path), dataset=dataset, format=fmt)
    if max_row_bytes < 1:
        raise ValueError(f"the row limit must be a positive number of bytes, not {max_row_bytes}")
    if not path.is_file():
        report.errors.append(RowError(str(path), 0, "is a folder, not a file" if path.is_dir() else "no such file"))
        raise ImportFailed(report)
    import_id = uuid.uuid4().hex
    try:
        with store.memory_limit(import_memory_limit(store)):
            _read_and_write(store, path, import_id, report, fmt, skip_bad, max_row_bytes)
        with store.transaction() as cur:
            dataset_id = ensure_dataset(cur, dataset, {"source": "import", "file": path.name}, internal)
            for table, link, column in (
                ("prompts", "dataset_prompts", "prompt_id"),
                ("pairs", "dataset_pairs", "pair_id"),
            ):
                cur.execute(f"INSERT OR IGNORE INTO {link} (dataset_id, {column}) SELECT DISTINCT ?, id "
                            "FROM import_staging WHERE import_id = ? AND tbl = ?", [dataset_id, import_id, table])
            cur.execute("DELETE FROM import_staging WHERE import_id = ?", [import_id])
    except BaseException as e:
        report.new_pairs = report.new_prompts = report.new_responses = 0
        try:
            with store.transaction() as cur:
                discard_import(cur, import_id)
        except StoreError:
            pass  # the disk may be full: the next time the workspace opens, it removes them
        if isinstance(e, duckdb.InterruptException) or "Query interrupted" in str(e):  # Ctrl-C inside DuckDB
            raise KeyboardInterrupt from None
        raise
    report.written = True
    # The word index in step now, so that the first search is fast; under the import's memory limit, as
    # reading every text of the dataset would otherwise fill DuckDB's cache with it. The index is derived
    # data: if this runs out of memory, the import stands and the first search brings the index in step.
    try:
        with store.memory_limit(import_memory_limit(store)):
            search_index.sync(store, store.dataset_id(dataset))
    except StoreError:
        pass
    return report


def _read_and_write(store: Store, path: Path, import_id: str, report: ImportReport, fmt: str, skip_bad: bool,
                    max_row_bytes: int) -> None:
    """Read every row, report the bad ones, and write the good ones in committed chunks."""
    batch = _Batch(source=path.name)
    parser = None if fmt == "auto" else PARSERS[fmt]
    try:
        for line, record in read_records(path, max_row_bytes):
            report.rows += 1
            try:
                if isinstance(record, BadRecord):
                    raise record
                if parser is None:
                    report.format = detect_format(record)
                    # HH transcripts and TRL rows may mix (a TRL text export does that)
                    parser = PARSERS[report.format if report.format in ("prompts", "demonstrations") else "preference"]
                item = parser(record)
            except BadRecord as e:
                report.errors.append(RowError(str(path), line, str(e)))
                continue
            if isinstance(item, PairRecord):
                report.pairs += 1
                report.empty_responses += is_empty_response(item.chosen) + is_empty_response(item.rejected)
            else:
                report.prompts_only += 1
            if report.errors and not skip_bad:
                continue  # this import will be undone: only collect the remaining errors
            batch.add(item)
            if len(batch) >= BATCH_ROWS:
                batch.write(store, import_id, report)
    except BadRecord as e:  # the file as a whole cannot be read
        report.errors.append(RowError(str(path), 0, str(e)))
        raise ImportFailed(report) from None
    if report.errors and not skip_bad:
        raise ImportFailed(report)
    if not report.pairs and not report.prompts_only:
        if not report.errors:
            report.errors.append(RowError(str(path), 0, "no rows to import"))
        raise ImportFailed(report)
    batch.write(store, import_id, report)

