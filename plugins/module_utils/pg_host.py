# -*- coding: utf-8 -*-
# Copyright: (c) headroom contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a PostgreSQL host's modules share: the clusters, the psql command line, the resources.

These run on the managed host (Debian's postgresql-common layout), as root.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import grp
import hashlib
import json
import os
import pwd
import stat

# Debian's postgresql-common: one unit and one binary directory per VERSION/NAME.
UNIT = "postgresql@{version}-{cluster}"
BINDIR = "/usr/lib/postgresql/{version}/bin"


def cluster_key(cluster):
    """How headroom names a cluster: "VERSION/NAME", as pg_lsclusters prints it."""
    return "%s/%s" % (version_of(cluster), cluster["cluster"])


def version_of(cluster):
    """pg_lsclusters --json (Perl) writes the version as a number or a string: an int either way."""
    return int(float(cluster["version"]))


def psql_argv(cluster, database="postgres"):
    """psql as the cluster's owner over its socket, reading SQL from stdin; nothing from ~/.psqlrc.
    The one psql command line of headroom's modules (postgresql_info, postgresql_query)."""
    return [
        "runuser", "-u", "postgres", "--", "psql", "-XAtq", "--set=ON_ERROR_STOP=1",
        "--host=%s" % cluster["socketdir"], "--port=%s" % cluster["port"], "--dbname=%s" % database,
    ]


def list_clusters(module):
    """pg_lsclusters --json, or [] where postgresql-common is not installed."""
    tool = module.get_bin_path("pg_lsclusters")
    if tool is None:
        return []
    rc, out, err = module.run_command([tool, "--json"])
    if rc != 0:
        module.fail_json(msg="pg_lsclusters --json failed: %s" % err.strip(), rc=rc)
    return json.loads(out or "[]")


def package_versions(module, names):
    """Debian packages to their installed version, None for those not installed (dpkg-query)."""
    if not names:
        return {}
    # dpkg-query exits 1 when a package was never installed; it is then reported as None.
    rc, stdout, stderr = module.run_command(
        ["dpkg-query", "--show", "--showformat=${Package} ${db:Status-Status} ${Version}\\n"] + list(names))
    if rc not in (0, 1):
        module.fail_json(msg="dpkg-query failed: %s" % stderr.strip(), rc=rc)
    found = {}
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1] == "installed":
            found[fields[0]] = fields[2]
    return dict((name, found.get(name)) for name in names)


def _name(lookup, number):
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def owner_and_group(found):
    """The owner and group names of an os.stat result (the number when a name is unknown)."""
    return _name(pwd.getpwuid, found.st_uid), _name(grp.getgrgid, found.st_gid)


def sha1_of(path):
    """The SHA-1 checksum of a file, as Ansible's stat and copy compare files."""
    with open(path, "rb") as handle:
        return hashlib.sha1(handle.read()).hexdigest()


def path_states(paths):
    """Each path to what file/copy/template would compare: whether it exists, is a directory,
    its mode (octal string), owner and group names, and for a regular file its SHA-1 checksum."""
    states = {}
    for path in paths:
        try:
            found = os.lstat(path)
        except OSError:
            states[path] = {"exists": False, "isdir": False, "mode": None, "owner": None, "group": None, "checksum": None}
            continue
        owner, group = owner_and_group(found)
        states[path] = {
            "exists": True,
            "isdir": stat.S_ISDIR(found.st_mode),
            "mode": "%04o" % stat.S_IMODE(found.st_mode),
            "owner": owner,
            "group": group,
            "checksum": sha1_of(path) if stat.S_ISREG(found.st_mode) else None,
        }
    return states


def units_enabled(module, units):
    """Each systemd unit to whether it starts at boot (systemctl is-enabled: one line per unit)."""
    if not units:
        return {}
    tool = module.get_bin_path("systemctl")
    if tool is None:
        return dict((unit, False) for unit in units)
    # is-enabled exits non-zero when one unit is not enabled; each line still says its state.
    _rc, out, _err = module.run_command([tool, "is-enabled"] + list(units))
    states = out.splitlines()
    return dict((unit, index < len(states) and states[index].strip() in ("enabled", "enabled-runtime"))
                for index, unit in enumerate(units))


def run_sql(module, cluster, sql, variables=None):
    """Runs SQL (one statement that prints one line) with psql; returns the line. Variables are
    set with --set and read in the SQL as :'name' (psql quotes them as literals)."""
    argv = psql_argv(cluster) + ["--set=%s=%s" % item for item in sorted((variables or {}).items())]
    rc, out, err = module.run_command(argv, data=sql, binary_data=False)
    if rc != 0:
        module.fail_json(msg="psql on cluster %s failed: %s" % (cluster_key(cluster), err.strip()), rc=rc)
    return out.strip()


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (IOError, OSError):
        return None


def _walk_up(root, path, first, second=None):
    """The raw contents of FIRST (and SECOND, joined by a space) in ROOT/PATH and in each parent."""
    values = []
    while True:
        value = _read("%s%s/%s" % (root, path, first))
        if value is not None:
            other = _read("%s%s/%s" % (root, path, second)) if second else None
            values.append(value if other is None else "%s %s" % (value, other))
        if path in ("/", ""):
            return values
        path = os.path.dirname(path)


def _cgroup_path(lines, controller):
    """The process's path in the v1 hierarchy holding CONTROLLER, or in the unified one for ""."""
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if controller == "" and parts[0] == "0":
            return parts[2]
        if controller and controller in parts[1].split(","):
            return parts[2]
    return None


def postmaster_pid(pgdata):
    """The running postmaster's pid from PGDATA/postmaster.pid, or None."""
    first = (_read(os.path.join(pgdata, "postmaster.pid")) or "").split("\n")[0] if pgdata else ""
    return int(first) if first.isdigit() and os.path.exists("/proc/%s/cgroup" % first) else None


def resources(pid=None):
    """What the sizing filter effective_resources needs: the host's memory and CPUs, and the raw
    cgroup limits on every level from the process's cgroup up to the root (v2 and v1; both are
    read when both are mounted: a unified tree without the memory or cpu controller can sit
    beside v1 hierarchies that hold the real limits). The filter decides which one wins."""
    pid = pid or os.getpid()
    memory = 0
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) * 1024
    lines = (_read("/proc/%s/cgroup" % pid) or "").splitlines()
    memory_limits, cpu_limits = [], []
    if os.path.isfile("/sys/fs/cgroup/cgroup.controllers"):
        path = _cgroup_path(lines, "")
        if path is not None:
            memory_limits += _walk_up("/sys/fs/cgroup", path, "memory.max")
            cpu_limits += _walk_up("/sys/fs/cgroup", path, "cpu.max")
    path = _cgroup_path(lines, "memory")
    if path is not None and os.access("/sys/fs/cgroup/memory/memory.limit_in_bytes", os.R_OK):
        memory_limits += _walk_up("/sys/fs/cgroup/memory", path, "memory.limit_in_bytes")
    path = _cgroup_path(lines, "cpu")
    if path is not None and os.access("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", os.R_OK):
        cpu_limits += _walk_up("/sys/fs/cgroup/cpu", path, "cpu.cfs_quota_us", "cpu.cfs_period_us")
    return {
        "memory": memory,
        "cpus": os.sysconf("SC_NPROCESSORS_ONLN"),
        "cgroup_memory_limits": memory_limits,
        "cgroup_cpu_limits": cpu_limits,
    }


def huge_pages():
    """The kernel's huge pages from /proc/meminfo: total, free and reserved."""
    found = {"total": 0, "free": 0, "reserved": 0}
    names = {"HugePages_Total:": "total", "HugePages_Free:": "free", "HugePages_Rsvd:": "reserved"}
    for line in (_read("/proc/meminfo") or "").splitlines():
        fields = line.split()
        if fields and fields[0] in names:
            found[names[fields[0]]] = int(fields[1])
    return found
