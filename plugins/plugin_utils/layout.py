"""Where headroom's pieces live, in one place for every role, playbook and plugin.

* ``HELPER_DIR``: the directory on managed hosts where the pgbouncer role installs its helpers
  (``pgbouncer-console``, ``pgbouncer-pause``), which postgresql_tuning and connection_budget run,
  and the pgpool role its own (``pgpool-check-config``, ``pgpool-psql``), which connection_budget's
  capacity probe runs.
* ``ROLES_DIR``: the collection's own roles, whose defaults the fleet plan reads (a variable
  the inventory leaves out counts as the role that uses it would count it).
"""

from pathlib import Path

HELPER_DIR = "/usr/local/lib/headroom"
HELPERS = ("pgbouncer-console", "pgbouncer-pause", "pgpool-check-config", "pgpool-psql")
ROLES_DIR = Path(__file__).resolve().parents[2] / "roles"
