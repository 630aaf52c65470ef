"""A workspace is one folder: `studio.duckdb`, `runs/<id>/`, `models/` and `exports/` (files the
app offers for download)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from store import Store, StoreError

DEFAULT_WORKSPACE = "studio-data"
ASSETS = Path(__file__).resolve().parents[1] / "assets"


@dataclass(frozen=True)
class Workspace:
    root: Path
    models_dir: Path

    @classmethod
    def at(cls, root: str | Path | None = None, models_dir: str | Path | None = None) -> Workspace:
        """The workspace folder (default ./studio-data, or $ALIGNSTUDIO_WORKSPACE).

        The models folder can be shared between workspaces ($ALIGNSTUDIO_MODELS_DIR), so the
        default model is converted once per machine rather than once per workspace."""
        root = Path(root or os.environ.get("ALIGNSTUDIO_WORKSPACE") or DEFAULT_WORKSPACE).expanduser().resolve()
        models = models_dir or os.environ.get("ALIGNSTUDIO_MODELS_DIR") or root / "models"
        return cls(root, Path(models).expanduser().resolve())

    @property
    def db_path(self) -> Path:
        return self.root / "studio.duckdb"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    def open_store(self) -> Store:
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root}: is a file, not a workspace folder; pass --workspace with a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StoreError(f"{self.root}: the workspace folder is not writable ({e.strerror})") from None
        return Store(self.db_path)
