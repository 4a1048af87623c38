#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) headroom contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Everything headroom reads about a host's PostgreSQL clusters, in one round trip."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: postgresql_info
short_description: Read a host's PostgreSQL clusters, their servers' settings and their resources in one task
version_added: "0.2.0"
description:
  - Lists the clusters (C(pg_lsclusters --json), Debian's postgresql-common) and, for each one, reads in a single
    C(psql) call what the running server says about its settings and files; adds the memory, CPUs and cgroup
    limits along the postmaster's cgroup chain, the managed file's place, times and backups, and the kernel's
    huge pages.
  - Changes nothing on the host.
  - "It reaches each server with C(psql) as the C(postgres) user over the cluster's Unix socket (peer
    authentication): every host with a cluster has C(psql), and this needs no password, no driver on the target
    and no open port."
author: headroom contributors (@headroom)
options:
  clusters:
    description:
      - Clusters to read, as C(VERSION/NAME). Empty reads every cluster. Each cluster found is returned either
        way, with RV(clusters[].wanted) saying whether it was asked for.
    type: list
    elements: str
    default: []
  config_mode:
    description:
      - Where headroom keeps the settings it manages, to locate the managed file.
      - V(include) is a file in the include directory C(postgresql.conf) reads (or C(conf.d) when it reads none);
        V(full) is C(postgresql.conf) itself.
    type: str
    choices: [include, full]
    default: include
  include_file:
    description: Name of the managed file in the include directory (O(config_mode=include)).
    type: str
    default: headroom.conf
  reserved_roles:
    description:
      - Roles that should be members of C(pg_use_reserved_connections) (PostgreSQL 16 and later).
        RV(clusters[].reserved_roles_lacking) lists those that exist and are not.
    type: list
    elements: str
    default: []
  role_connection_limits:
    description:
      - Login roles and the C(CONNECTION LIMIT) each should have, role name to limit.
        RV(clusters[].role_limits) reports what each has now.
    type: dict
    default: {}
  read_servers:
    description: Whether to query the running servers; V(false) returns the clusters and resources only.
    type: bool
    default: true
  packages:
    description: Debian packages whose installed version RV(packages) reports (C(dpkg-query)).
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    description: Reads only, so it runs the same in check mode.
    support: full
  diff_mode:
    description: Changes nothing, so there is no diff.
    support: none
notes:
  - Run it as root (C(become)), which reads the postmaster's cgroup and switches to C(postgres) for C(psql).
"""

EXAMPLES = r"""
- name: Read the clusters and their servers
  headroom.pg.postgresql_info:
    clusters: ["15/main"]
  register: pg

- name: Say what each server runs
  ansible.builtin.debug:
    msg: "{{ item.name }}: max_connections {{ (item.settings | selectattr('name', 'eq', 'max_connections') | first).setting }}"
  loop: "{{ pg.clusters | selectattr('running') }}"
"""

RETURN = r"""
check_mode:
  description: Whether this run only checks (also true for a play's C(check_mode), which C(ansible_check_mode) misses).
  returned: always
  type: bool
resources:
  description: Memory, CPUs and cgroup limits of this module's own process (a host without a running cluster).
  returned: always
  type: dict
packages:
  description: Each package of O(packages) to its installed version, or null when it is not installed.
  returned: always
  type: dict
  sample: {"postgresql-15": "15.14-0+deb12u1", "postgresql-contrib": null}
huge_pages:
  description: The kernel's huge pages (C(total), C(free), C(reserved)) from /proc/meminfo.
  returned: always
  type: dict
clusters:
  description: One entry per cluster found.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: C(VERSION/NAME).
      type: str
    wanted:
      description: Whether O(clusters) asked for it (or was empty).
      type: bool
    version:
      description: Major version.
      type: int
    cluster:
      description: Cluster name.
      type: str
    port:
      description: Port.
      type: int
    running:
      description: Whether the server runs.
      type: bool
    pgdata:
      description: Data directory.
      type: str
    configdir:
      description: Configuration directory.
      type: str
    config_file:
      description: Its C(postgresql.conf).
      type: str
    socketdir:
      description: Unix socket directory.
      type: str
    logfile:
      description: Log file.
      type: str
    unit:
      description: systemd unit.
      type: str
    enabled:
      description: Whether the unit starts at boot (C(systemctl is-enabled)).
      type: bool
    bindir:
      description: Directory of the server's programs.
      type: str
    pkglibdir:
      description: The server's library directory (C($libdir)).
      type: str
    include_dir_set:
      description: Whether C(postgresql.conf) has an active C(include_dir) line.
      type: bool
    managed_file:
      description: >-
        Path, C(exists), C(isdir), C(mtime), C(mode) (octal), C(owner), C(group) and SHA-1 C(checksum) of the managed
        file (the last four null when it is missing); whether its directory exists (C(dir_exists)) and its
        C(dir_mode) (octal), C(dir_owner) and C(dir_group); and its C(backups) (C(path), C(mtime)), newest first.
      type: dict
    resources:
      description: Memory, CPUs and cgroup limits along the postmaster's cgroup chain (this process's when stopped).
      type: dict
    load_time:
      description: When the server last read its files (epoch seconds). Running servers only.
      type: float
    start_time:
      description: When the postmaster started (epoch seconds). Running servers only.
      type: float
    settings:
      description: C(pg_settings) rows (name, setting, unit, vartype, context, pending_restart). Running servers only.
      type: list
      elements: dict
    file_settings:
      description: For each parameter the C(pg_file_settings) line that wins, with any error. Running servers only.
      type: list
      elements: dict
    file_errors:
      description: >-
        C(pg_file_settings) lines with an error other than "setting could not be applied" (which only means a
        restart is pending). Running servers only.
      type: list
      elements: dict
    config_file_settings:
      description: What C(postgresql.conf) itself sets, name to value, the last line winning. Running servers only.
      type: dict
    pending_restart:
      description: Names of the settings the server waits to restart for. Running servers only.
      type: list
      elements: str
    reserved_roles_lacking:
      description: Roles of O(reserved_roles) that exist and are not members of C(pg_use_reserved_connections).
      type: list
      elements: str
    reserved_roles_missing:
      description: Roles of O(reserved_roles) that do not exist.
      type: list
      elements: str
    role_limits:
      description:
        - One row per role of O(role_connection_limits), running servers only, with C(role), C(wanted) (the
          asked limit), C(exists), C(connection_limit) (C(rolconnlimit), -1 for none, null when the role does
          not exist) and C(superuser) (superusers are not held to a connection limit).
      type: list
      elements: dict
    in_recovery:
      description: Whether the server is a standby (C(pg_is_in_recovery())). Running servers only.
      type: bool
"""

import fnmatch
import json
import os
import re
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.headroom.pg.plugins.module_utils.pg_host import (
    BINDIR,
    UNIT,
    cluster_key,
    huge_pages,
    list_clusters,
    owner_and_group,
    package_versions,
    path_states,
    postmaster_pid,
    resources,
    run_sql,
    units_enabled,
    version_of,
)

INCLUDE_DIR = re.compile(r"^\s*include_dir\s*=\s*'?([^'#]*?)'?\s*(#.*)?$")

# One statement, one line of JSON. pg_file_settings parses the files on every read: once here.
STATE_SQL = """
WITH f AS MATERIALIZED (SELECT * FROM pg_file_settings)
SELECT json_build_object(
  'load_time', extract(epoch FROM pg_conf_load_time()),
  'in_recovery', pg_is_in_recovery(),
  'start_time', extract(epoch FROM pg_postmaster_start_time()),
  'settings', (SELECT json_agg(s) FROM (SELECT name, setting, unit, vartype, context, pending_restart
                                         FROM pg_settings) s),
  'file_settings', (SELECT coalesce(json_agg(w), '[]') FROM (SELECT DISTINCT ON (name) name, setting, sourcefile,
                    sourceline, error FROM f ORDER BY name, seqno DESC) w),
  'file_errors', (SELECT coalesce(json_agg(e), '[]') FROM (SELECT sourcefile, sourceline, name, setting, error FROM f
                  WHERE error IS NOT NULL AND error <> 'setting could not be applied') e),
  'config_file_settings', (SELECT coalesce(json_object_agg(name, setting), '{}') FROM (SELECT DISTINCT ON (lower(name))
                           lower(name) AS name, setting FROM f WHERE sourcefile = current_setting('config_file')
                           ORDER BY lower(name), seqno DESC) c),
  'reserved_roles_missing', (SELECT coalesce(json_agg(r), '[]') FROM json_array_elements_text(:'roles'::json) r
                             WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r)),
  'reserved_roles_lacking', (SELECT coalesce(json_agg(r), '[]') FROM json_array_elements_text(:'roles'::json) r
                             WHERE CASE WHEN NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN false
                                        WHEN current_setting('server_version_num')::int < 160000 THEN false
                                        ELSE NOT pg_has_role(r, 'pg_use_reserved_connections', 'MEMBER') END),
  'role_limits', (SELECT coalesce(json_agg(json_build_object('role', w.key, 'wanted', w.value::int,
                  'exists', r.rolname IS NOT NULL, 'connection_limit', r.rolconnlimit, 'superuser', r.rolsuper)
                  ORDER BY w.key), '[]') FROM json_each_text(:'limits'::json) w LEFT JOIN pg_roles r ON r.rolname = w.key)
);
"""


def _include_dirs(config_file):
    try:
        with open(config_file) as handle:
            lines = handle.read().splitlines()
    except (IOError, OSError):
        return []
    return [match.group(1) for match in map(INCLUDE_DIR.match, lines) if match]


def _managed_file(cluster, config_file, config_mode, include_file):
    if config_mode == "full":
        path = config_file
        include_dir_set = True
    else:
        directories = _include_dirs(config_file)
        include_dir_set = bool(directories)
        directory = directories[0] if directories else "conf.d"
        if not os.path.isabs(directory):
            directory = os.path.join(cluster["configdir"], directory)
        path = os.path.join(directory, include_file)
    directory, base = os.path.split(path)
    backups = []
    if os.path.isdir(directory):
        for entry in os.listdir(directory):
            if fnmatch.fnmatchcase(entry, base + ".*~"):
                full = os.path.join(directory, entry)
                backups.append({"path": full, "mtime": os.stat(full).st_mtime})
    backups.sort(key=lambda backup: backup["mtime"], reverse=True)
    exists = os.path.exists(path)
    found = os.stat(directory) if os.path.isdir(directory) else None
    owner, group = owner_and_group(found) if found else ("", "")
    # isdir, mode, owner, group and checksum: what the template task would compare.
    managed = path_states([path])[path]
    managed.update({
        "path": path,
        "exists": exists,
        "mtime": os.stat(path).st_mtime if exists else 0,
        "dir_exists": found is not None,
        "dir_mode": "%04o" % stat.S_IMODE(found.st_mode) if found else "",
        "dir_owner": owner,
        "dir_group": group,
        "backups": backups,
    })
    return include_dir_set, managed


def _pkglibdir(module, bindir):
    pg_config = os.path.join(bindir, "pg_config")
    if not os.path.exists(pg_config):
        return ""
    rc, out, _err = module.run_command([pg_config, "--pkglibdir"])
    return out.strip() if rc == 0 else ""


def read_cluster(module, found, wanted):
    version = version_of(found)
    config_file = os.path.join(found["configdir"], "postgresql.conf")
    include_dir_set, managed = _managed_file(found, config_file, module.params["config_mode"], module.params["include_file"])
    bindir = BINDIR.format(version=version)
    cluster = {
        "name": cluster_key(found),
        "wanted": wanted,
        "version": version,
        "cluster": found["cluster"],
        "port": int(found["port"]),
        "running": bool(int(found.get("running") or 0)),
        "pgdata": found["pgdata"],
        "configdir": found["configdir"],
        "config_file": config_file,
        "socketdir": found.get("socketdir") or "/var/run/postgresql",
        "logfile": found.get("logfile") or "",
        "unit": UNIT.format(version=version, cluster=found["cluster"]),
        "bindir": bindir,
        "pkglibdir": _pkglibdir(module, bindir),
        "include_dir_set": include_dir_set,
        "managed_file": managed,
        "resources": resources(postmaster_pid(found["pgdata"])),
    }
    if cluster["running"] and wanted and module.params["read_servers"]:
        limits = {role: int(limit) for role, limit in module.params["role_connection_limits"].items()}
        state = run_sql(
            module, cluster, STATE_SQL, {"roles": json.dumps(module.params["reserved_roles"]), "limits": json.dumps(limits)}
        )
        cluster.update(json.loads(state))
        cluster["pending_restart"] = [row["name"] for row in cluster["settings"] if row["pending_restart"]]
    return cluster


def main():
    module = AnsibleModule(
        argument_spec={
            "clusters": {"type": "list", "elements": "str", "default": []},
            "config_mode": {"type": "str", "choices": ["include", "full"], "default": "include"},
            "include_file": {"type": "str", "default": "headroom.conf"},
            "reserved_roles": {"type": "list", "elements": "str", "default": [], "no_log": False},
            "role_connection_limits": {"type": "dict", "default": {}, "no_log": False},
            "read_servers": {"type": "bool", "default": True},
            "packages": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    asked = module.params["clusters"]
    clusters = [read_cluster(module, found, not asked or cluster_key(found) in asked) for found in list_clusters(module)]
    enabled = units_enabled(module, [cluster["unit"] for cluster in clusters])
    for cluster in clusters:
        cluster["enabled"] = enabled[cluster["unit"]]
    module.exit_json(
        changed=False,
        check_mode=module.check_mode,
        packages=package_versions(module, module.params["packages"]),
        resources=resources(),
        huge_pages=huge_pages(),
        clusters=clusters,
    )


if __name__ == "__main__":
    main()
