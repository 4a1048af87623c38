"""docs/sizing.md's sizing tables are what the filters give today (scripts/sizing-tables.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_sizing_doc_tables_are_the_filters_output():
    spec = importlib.util.spec_from_file_location("sizing_tables", ROOT / "scripts" / "sizing-tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    doc = (ROOT / "docs" / "sizing.md").read_text(encoding="utf-8")
    assert tables.replace(doc, tables.tables()) == doc, (
        "docs/sizing.md's sizing tables are stale: run .venv/bin/python scripts/sizing-tables.py --write"
    )
