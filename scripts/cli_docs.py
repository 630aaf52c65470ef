"""Write docs/cli.md from the CLI's own --help (tests/test_docs.py fails when the two differ)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studio.cli import reference  # noqa: E402

if __name__ == "__main__":
    (ROOT / "docs" / "cli.md").write_text(reference(), encoding="utf-8")
    print(f"wrote {ROOT / 'docs' / 'cli.md'}")
