"""The documentation stays true: docs/cli.md is the CLI's own --help, the README is a front page
of about 12 KB, and every link in it and in docs/ leads to a file that exists."""

import re
from pathlib import Path

from studio.cli import reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_reference_is_the_clis_own_help():
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == reference(), \
        "docs/cli.md is out of date: python scripts/cli_docs.py writes it"


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_bytes()) <= 12_500


def test_every_link_leads_to_a_file():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to {target}, which is missing"
