"""Print the sizing tables of docs/sizing.md from the filters themselves.

    .venv/bin/python scripts/sizing-tables.py            print the tables (Markdown)
    .venv/bin/python scripts/sizing-tables.py --write    replace them in docs/sizing.md

docs/sizing.md holds them between the markers ``<!-- sizing-tables -->`` and
``<!-- /sizing-tables -->``; tests/unit/test_doc_tables.py fails when they differ.
"""

import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder  # noqa: E402

_AnsibleCollectionFinder(paths=[str(ROOT / "collections")])._install()
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_sizing import pgbouncer_tune  # noqa: E402
from ansible_collections.headroom.pg.plugins.filter.postgresql_sizing import (  # noqa: E402
    pg_max_connections,
    pg_size_bytes,
    pg_tune,
)
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_sizing import RDS_BYTES_PER_CONNECTION  # noqa: E402

DOC = ROOT / "docs" / "sizing.md"
START, END = "<!-- sizing-tables -->", "<!-- /sizing-tables -->"
MB = 1024**2
HOSTS = [("512MB", 1), ("1GB", 2), ("4GB", 2), ("16GB", 4), ("64GB", 16), ("256GB", 64)]


def pgtune_work_mem(memory, connections, shared_buffers):
    """PGTune's work_mem for web: (RAM - shared_buffers) / (3 x max_connections), in kB."""
    return math.floor((memory - shared_buffers) / (connections * 3) / 1024)


def tables():
    out = [
        "PostgreSQL 17, profile `web`, storage `ssd`, no demand declared (PGTune's default 200 "
        "connections, capped at the ceiling). RDS: Amazon RDS's default max_connections, memory / 9531392.",
        "",
        "| memory | CPUs | ceiling | RDS | ceiling / RDS | advice | max_connections | shared_buffers | "
        "effective_cache_size | work_mem (PGTune's) | maintenance_work_mem | max_parallel_workers |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: |",
    ]
    for memory, cpus in HOSTS:
        spec = {"memory": memory, "cpus": cpus, "version": 17, "profile": "web"}
        report, settings = pg_max_connections(spec), pg_tune(spec)
        size = pg_size_bytes(memory)
        rds = size // RDS_BYTES_PER_CONNECTION
        pgtune = pgtune_work_mem(size, 200, pg_size_bytes(settings["shared_buffers"], "8kB"))
        out.append(
            f"| {memory} | {cpus} | {report['ceiling']} | {rds} | {report['ceiling'] / rds:.2f} | {report['advice']} | "
            f"{settings['max_connections']} | {settings['shared_buffers']} | {settings['effective_cache_size']} | "
            f"{settings['work_mem']} ({pgtune}kB) | {settings['maintenance_work_mem']} | {settings['max_parallel_workers']} |"
        )
    out += [
        "",
        "The same hosts behind one PgBouncer host with one pool: its size from the pool rule, "
        "plus 2 direct monitoring connections, is the demand; spare slots come on top.",
        "",
        "| memory | CPUs | pool | demand | spare | max_connections | work_mem | warnings |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for memory, cpus in HOSTS:
        pool = pgbouncer_tune({"cpus": 1, "server_cpus": cpus, "databases": [{"name": "app", "users": 1}]})
        demand = pool["server_connections"] + 2
        spec = {"memory": memory, "cpus": cpus, "version": 17, "profile": "web", "connection_demand": demand}
        report, settings = pg_max_connections(spec), pg_tune(spec)
        out.append(
            f"| {memory} | {cpus} | {pool['default_pool_size']} | {demand} | {report['spare_connections']} | "
            f"{settings['max_connections']} | {settings['work_mem']} | {len(report['warnings'])} |"
        )
    return "\n".join(out) + "\n"


def replace(text, block):
    pattern = re.compile(re.escape(START) + r"\n.*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"docs/sizing.md has no {START} ... {END} block")
    return pattern.sub(lambda _match: f"{START}\n{block}{END}", text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        DOC.write_text(replace(DOC.read_text(encoding="utf-8"), tables()), encoding="utf-8")
    else:
        sys.stdout.write(tables())
