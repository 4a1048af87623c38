#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) headroom contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run one SQL statement on a local PostgreSQL cluster as its owner: headroom's one psql line."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: postgresql_query
short_description: Run one SQL statement on a local cluster as postgres, over its Unix socket
version_added: "0.2.0"
description:
  - Runs O(query) with C(psql) as the C(postgres) user over the cluster's Unix socket (peer authentication),
    the SQL on standard input, nothing read from C(~/.psqlrc), stopping at the first error.
  - This is the one place headroom's roles build a psql command line for a server on the host.
  - Returns what psql printed (unaligned, tuples only), and the server's NOTICE lines apart.
author: headroom contributors (@headroom)
options:
  port:
    description: The cluster's port.
    type: int
    required: true
  socket_dir:
    description: The cluster's Unix socket directory.
    type: str
    default: /var/run/postgresql
  database:
    description: Database to connect to.
    type: str
    default: postgres
  query:
    description: The SQL. psql variables given in O(variables) are read in it as C(:'name') (quoted as a literal).
    type: str
    required: true
  variables:
    description: psql variables, name to value.
    type: dict
    default: {}
  read_only:
    description:
      - Whether the statement only reads. A read runs in check mode too; anything else is not run in check mode.
      - The module reports C(changed) only for a statement that is not read-only; set C(changed_when) for finer rules.
    type: bool
    default: true
attributes:
  check_mode:
    description: Reads run in check mode; other statements are skipped there.
    support: partial
    details: A statement with O(read_only=false) is not run in check mode, so what it would change is not known.
  diff_mode:
    description: No diff.
    support: none
notes:
  - Run it as root (C(become)), which switches to C(postgres).
"""

EXAMPLES = r"""
- name: Read when the server last read its files
  headroom.pg.postgresql_query:
    port: 5432
    query: SELECT extract(epoch FROM pg_conf_load_time())
  register: loaded

- name: Reload
  headroom.pg.postgresql_query:
    port: 5432
    query: SELECT pg_reload_conf()
    read_only: false
"""

RETURN = r"""
stdout:
  description: What psql printed, without the trailing newline.
  returned: when the statement ran
  type: str
stderr:
  description: What psql wrote to standard error (the server's notices, or the error).
  returned: when the statement ran
  type: str
notices:
  description: The server's NOTICE messages, without their C(NOTICE:) prefix.
  returned: when the statement ran
  type: list
  elements: str
rc:
  description: psql's exit code.
  returned: when the statement ran
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.headroom.pg.plugins.module_utils.pg_host import psql_argv


def main():
    module = AnsibleModule(
        argument_spec={
            "port": {"type": "int", "required": True},
            "socket_dir": {"type": "str", "default": "/var/run/postgresql"},
            "database": {"type": "str", "default": "postgres"},
            "query": {"type": "str", "required": True},
            "variables": {"type": "dict", "default": {}},
            "read_only": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    if module.check_mode and not params["read_only"]:
        module.exit_json(changed=False, skipped=True, msg="not run in check mode: the statement is not read-only")
    cluster = {"port": params["port"], "socketdir": params["socket_dir"]}
    argv = psql_argv(cluster, params["database"]) + [
        "--set=%s=%s" % (name, value) for name, value in sorted(params["variables"].items())
    ]
    rc, out, err = module.run_command(argv, data=params["query"], binary_data=False)
    result = {
        "changed": rc == 0 and not params["read_only"],
        "stdout": out.rstrip("\n"),
        "stderr": err,
        "notices": [line.split(":", 1)[1].strip() for line in err.splitlines() if line.startswith("NOTICE:")],
        "rc": rc,
    }
    if rc != 0:
        module.fail_json(msg="psql failed: %s" % err.strip(), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
