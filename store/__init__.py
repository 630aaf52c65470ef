"""The workspace's single source of truth: a DuckDB file with prompts, responses, pairs, labels,
datasets, runs, metrics and models. Imports nothing of the studio's above it."""

from store.db import Store, StoreError, content_hash
from store.exports import EXPORT_FORMATS, ExportError, export_pairs
from store.formats import FORMATS
from store.imports import ImportFailed, ImportReport, import_file

__all__ = ["Store", "StoreError", "content_hash", "EXPORT_FORMATS", "ExportError", "export_pairs",
           "FORMATS", "ImportFailed", "ImportReport", "import_file"]
