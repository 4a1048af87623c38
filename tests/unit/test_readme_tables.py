"""The README's sizing tables are what the filters give today (scripts/sizing-tables.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_tables_are_the_filters_output():
    spec = importlib.util.spec_from_file_location("sizing_tables", ROOT / "scripts" / "sizing-tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert tables.replace(readme, tables.tables()) == readme, (
        "README.md's sizing tables are stale: run .venv/bin/python scripts/sizing-tables.py --write"
    )
