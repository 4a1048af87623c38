#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) headroom contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pgbouncer_info
short_description: Read the PgBouncer processes of a host in one task
version_added: "0.2.0"
description:
  - Reads, without changing anything, what the PgBouncer units of the host run now, and the
    files that say which processes exist. One task replaces the separate probes of the
    C(headroom.pg.pgbouncer) role (dpkg-query, pgbouncer --version, systemctl, find, one admin
    console client per command and unit, grep of the logs).
  - Units are C(pgbouncer.service) and C(pgbouncer@N.service) as systemd lists them, plus the
    names in O(units) (units the caller plans and that may not exist yet).
  - For each running unit it reads the admin console with C(SHOW CONFIG), C(SHOW DATABASES),
    C(SHOW POOLS) and C(SHOW USERS) (as O(show) selects), the soft file descriptor limit of its main process from
    C(/proc/PID/limits), and the last C(kernel file descriptor limit) line of the log file that
    C(SHOW CONFIG) names.
  - "How it reaches the console: as the special user C(pgbouncer), over the Unix socket the main
    process listens on (found in C(/proc), so it works while a changed C(unix_socket_dir) or
    C(listen_port) waits for a restart), with C(psql) run as the UID and GID that own the process
    (C(setpriv)). PgBouncer lets that user in without a password only over its Unix socket and
    only from its own UID (C(admin_pre_login) in PgBouncer's C(src/admin.c)), so no console
    password exists anywhere. C(psql) is what the role installs already (C(postgresql-client))
    and needs no Python driver on the host; the commands of one unit run in one C(psql) session."
  - Only C(SHOW) commands are run, so the module is safe in check mode and reports
    C(changed=false) always.
author:
  - headroom maintainers (@headroom)
options:
  units:
    description:
      - Units to report in addition to the PgBouncer units systemd knows, for example the units a
        new layout is about to start. A unit systemd does not know is reported with C(load=not-found).
    type: list
    elements: str
    default: []
  show:
    description:
      - Admin console commands to read on each running unit.
    type: list
    elements: str
    choices: [config, databases, pools, users]
    default: [config, databases, pools, users]
  config_dir:
    description:
      - Directory of the PgBouncer ini files. Every C(pgbouncer.ini), C(pgbouncer-N.ini) and their
        C(.last-good) copies in it are listed with their SHA-1 checksums.
    type: path
    default: /etc/pgbouncer
  packages:
    description:
      - Debian packages whose installed version to report (C(dpkg-query)).
    type: list
    elements: str
    default: []
  fd_report:
    description:
      - Read each running unit's last file descriptor report from its log file.
    type: bool
    default: true
  paths:
    description:
      - Files and directories whose state RV(paths) reports, so that a caller can leave alone the ones
        that are already as it wants them.
    type: list
    elements: path
    default: []
notes:
  - Runs on the PgBouncer host as root (C(become)), which may read every process's C(/proc) entries.
  - Needs C(psql) and C(setpriv) (util-linux) on the host.
seealso:
  - name: PgBouncer usage, admin console
    description: The SHOW commands and the console's login rules.
    link: https://www.pgbouncer.org/usage.html#admin-console
"""

EXAMPLES = r"""
- name: Read the PgBouncer processes of the host
  headroom.pg.pgbouncer_info:
    units: [pgbouncer.service]
    packages: [pgbouncer, postgresql-client]
  register: pgbouncer

- name: Show the live pool_mode of the single unit
  ansible.builtin.debug:
    msg: "{{ pgbouncer.units['pgbouncer.service'].config.pool_mode }}"
"""

RETURN = r"""
version:
  description: The installed PgBouncer's version (C(pgbouncer --version)); null when it is not installed.
  returned: always
  type: str
  sample: "1.18.0"
packages:
  description: Each package of O(packages) with its installed version, null when it is not installed.
  returned: always
  type: dict
  sample: {"pgbouncer": "1.18.0-1", "postgresql-client": null}
config_files:
  description: The ini files (and last good copies) in O(config_dir), each with its SHA-1 checksum.
  returned: always
  type: dict
  sample: {"/etc/pgbouncer/pgbouncer.ini": "0b6f6a...", "/etc/pgbouncer/pgbouncer.ini.last-good": "0b6f6a..."}
template_unit:
  description: Whether C(/etc/systemd/system/pgbouncer@.service) or its drop-in directory exists.
  returned: always
  type: bool
paths:
  description:
    - Each path of O(paths), and each ini file of RV(config_files), with C(exists), C(isdir), C(mode) (octal
      string), C(owner), C(group) and, for a regular file, its SHA-1 C(checksum) (null otherwise). A missing path
      has C(exists=false) and the others null.
  returned: always
  type: dict
  sample: {"/usr/local/lib/headroom": {"exists": true, "isdir": true, "mode": "0755", "owner": "root", "group": "root",
           "checksum": null}}
units:
  description: The units by name, as systemd sees them, with what their running process reports.
  returned: always
  type: dict
  contains:
    load:
      description: C(LoadState), for example C(loaded) or C(not-found).
      type: str
    active:
      description: C(ActiveState), for example C(active) or C(inactive).
      type: str
    sub:
      description: C(SubState), for example C(running).
      type: str
    enabled:
      description: C(UnitFileState), for example C(enabled), C(disabled), or empty for an unknown unit.
      type: str
    main_pid:
      description: PID of the main process, 0 when none runs.
      type: int
    running:
      description: Whether a main process runs; the fields below are empty (null, {} or []) when none does.
      type: bool
    socket:
      description: The Unix socket the process listens on.
      type: str
    nofile:
      description: Soft limit of open files of the process (C(/proc/PID/limits)).
      type: int
    program_replaced:
      description:
        - Whether the program the process runs was replaced on disk since it started (C(/proc/PID/exe)
          ends in C( (deleted)), as after a package upgrade); only a restart runs the new one.
        - The link is read as the process's owner, as root without C(CAP_SYS_PTRACE) (in a container) may not.
      type: bool
    config:
      description: C(SHOW CONFIG) as a dict of key to value, when O(show) has C(config).
      type: dict
    databases:
      description: C(SHOW DATABASES) rows, when O(show) has C(databases).
      type: list
      elements: dict
    pools:
      description: C(SHOW POOLS) rows, when O(show) has C(pools).
      type: list
      elements: dict
    users:
      description:
        - C(SHOW USERS) rows, when O(show) has C(users). From PgBouncer 1.23 they carry
          C(max_user_connections), and from 1.24 C(max_user_client_connections); 1.18 has only
          C(name) and C(pool_mode).
      type: list
      elements: dict
    fd_report:
      description:
        - PgBouncer's last start-up report of its file descriptors (C(limit), C(hard), C(max_client_conn),
          C(expected), and the C(line) itself); null when the log has none or O(fd_report) is false.
      type: dict
  sample:
    pgbouncer.service:
      load: loaded
      active: active
      sub: running
      enabled: enabled
      main_pid: 812
      running: true
      socket: /var/run/postgresql/.s.PGSQL.6432
      nofile: 1420
      program_replaced: false
      config: {pool_mode: transaction, max_client_conn: "1200"}
      databases: [{name: bench, pool_size: "12"}]
      pools: [{database: bench, user: bench, sv_idle: "3"}]
      users: [{name: leaky, max_user_connections: "14", max_user_client_connections: "5"}]
      fd_report: {limit: 1420, hard: 1420, max_client_conn: 1200, expected: 1262, line: "... kernel file descriptor limit: ..."}
"""

import glob
import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.headroom.pg.plugins.module_utils.pgbouncer import (
    FD_REPORT_MARKER,
    UNIT_PATTERNS,
    UNIT_PROPERTIES,
    Console,
    last_line_with,
    nofile_limit,
    parse_fd_report,
    parse_list_units,
    parse_systemctl_show,
    read_file,
)
from ansible_collections.headroom.pg.plugins.module_utils.pg_host import package_versions, path_states, sha1_of

SYSTEMD_DIR = "/etc/systemd/system"
INI_FILE = re.compile(r"^pgbouncer(-[0-9]+)?\.ini(\.last-good)?$")


def run(module, argv, allowed=(0,)):
    rc, stdout, stderr = module.run_command(argv)
    if rc not in allowed:
        module.fail_json(msg="%s failed: %s" % (" ".join(argv), stderr.strip()), rc=rc, stderr=stderr)
    return rc, stdout


def installed_version(module):
    binary = module.get_bin_path("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if binary is None:
        return None
    _rc, stdout = run(module, [binary, "--version"])
    match = re.search(r"[0-9]+\.[0-9]+(\.[0-9]+)?", stdout)
    return match.group(0) if match else None


def config_files(directory):
    files = {}
    for path in sorted(glob.glob(os.path.join(directory, "pgbouncer*.ini*"))):
        if INI_FILE.match(os.path.basename(path)) and os.path.isfile(path):
            files[path] = sha1_of(path)
    return files


def units_of(module, extra):
    systemctl = module.get_bin_path("systemctl", required=True)
    _rc, listed = run(module, [systemctl, "list-units", "--all", "--plain", "--no-legend", "--type=service"]
                      + list(UNIT_PATTERNS))
    names = sorted(set(parse_list_units(listed)) | set(extra))
    if not names:
        return {}
    _rc, shown = run(module, [systemctl, "show", "--property=" + ",".join(UNIT_PROPERTIES)] + names)
    return parse_systemctl_show(shown)


def read_process(module, unit, show, fd_report):
    """Console results, fd limit and fd report of a running unit's main process."""
    pid = unit["main_pid"]
    console = Console(module, pid)
    unit["socket"] = console.socket
    unit["nofile"] = nofile_limit(read_file("/proc/%d/limits" % pid))
    unit["program_replaced"] = console.program_replaced()
    results = console.show(show)
    if "config" in results:
        unit["config"] = dict((row["key"], row["value"]) for row in results["config"])
    for key in ("databases", "pools", "users"):
        if key in results:
            unit[key] = results[key]
    if fd_report:
        logfile = unit.get("config", {}).get("logfile") or read_config_value(console, "logfile")
        if logfile:
            try:
                unit["fd_report"] = parse_fd_report(last_line_with(logfile, FD_REPORT_MARKER))
            except OSError as err:
                module.fail_json(msg="cannot read the log file %s of %s: %s" % (logfile, pid, err))


def read_config_value(console, key):
    rows = console.show(["config"])["config"]
    return dict((row["key"], row["value"]) for row in rows).get(key)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            units=dict(type="list", elements="str", default=[]),
            show=dict(type="list", elements="str", default=["config", "databases", "pools", "users"],
                      choices=["config", "databases", "pools", "users"]),
            config_dir=dict(type="path", default="/etc/pgbouncer"),
            packages=dict(type="list", elements="str", default=[]),
            fd_report=dict(type="bool", default=True),
            paths=dict(type="list", elements="path", default=[]),
        ),
        supports_check_mode=True,
    )
    params = module.params
    show = [key for key in ("config", "databases", "pools", "users") if key in params["show"]]
    units = units_of(module, params["units"])
    for name in sorted(units):
        # Every unit has every field: empty ones when no process runs.
        units[name].update(socket=None, nofile=None, program_replaced=False, config={}, databases=[], pools=[], users=[], fd_report=None)
        if units[name]["running"]:
            read_process(module, units[name], show, params["fd_report"])
    inis = config_files(params["config_dir"])
    module.exit_json(
        changed=False,
        version=installed_version(module),
        packages=package_versions(module, params["packages"]),
        config_files=inis,
        template_unit=any(os.path.exists(os.path.join(SYSTEMD_DIR, name))
                          for name in ("pgbouncer@.service", "pgbouncer@.service.d")),
        units=units,
        paths=path_states(sorted(set(params["paths"]) | set(inis))),
    )


if __name__ == "__main__":
    main()
