"""What the running PgBouncer processes differ in from the planned ones, from one pgbouncer_info read.

Two jobs of the pgbouncer role, on the controller:

* ``pgbouncer_live_diff``: which managed values a process does not run (``SHOW CONFIG``,
  ``SHOW DATABASES``' pool sizes and client limits, ``SHOW USERS``' limits where the version
  prints them, the open-files limit), each marked ``restart`` when a
  RELOAD cannot change it (facts.md, PgBouncer's documentation: listen_addr,
  listen_port, unix_socket_dir, so_reuseport, user, pidfile; the limit is the kernel's).
  A RELOAD of a broken file still answers success and falls back to defaults, so this
  comparison is the only proof that a file is live.
* ``pgbouncer_retired``: which processes a new layout drops (1 -> N, N -> M, N -> 1), from
  the units systemd knows and the numbered ini files left on disk.
* ``pgbouncer_apply``: why anything must be made live (apply.yml runs only then): a written
  file changed, a process to stop, start or enable, or a restart allowed and needed.

Values compare as text, the way SHOW CONFIG prints them; a trailing ``.0`` of the live
value is dropped (some versions print timeouts as ``600.0``).
"""

import re

from ansible.errors import AnsibleFilterError

_NUMBERED_UNIT = re.compile(r"^pgbouncer@([0-9]+)\.service$")
_NUMBERED_INI = re.compile(r"^pgbouncer-([0-9]+)\.ini$")
_TRAILING_ZERO = re.compile(r"\.0$")


def _text(value):
    return "" if value is None else str(value)


def _unit(units, name):
    if not isinstance(units, dict):
        raise AnsibleFilterError(f"pgbouncer_live_diff: units must be the units dict of pgbouncer_info, got {units!r}")
    return units.get(name) or {}


#: The client and user limits of pgbouncer_shares and the SHOW columns that print them (1.23+/1.24+;
#: 1.18 prints none, so nothing is compared there), and how an unset one prints: a limit as 0.
#: A user's own pool settings (pgbouncer_user_settings) are compared only where planned (None):
#: before the fix of PgBouncer #1489 (2026-05, after 1.25.2) SHOW USERS prints, for a user
#: without its own pool_size, the one of the user printed before it ("%9d", so padded).
_SHARE_COLUMNS = (
    ("users", "name", "max_user_connections", "max_user_connections", 0),
    ("users", "name", "max_user_client_connections", "max_user_client_connections", 0),
    ("users", "name", "pool_size", "pool_size", None),
    ("users", "name", "reserve_pool_size", "reserve_pool_size", None),
    ("users", "name", "pool_mode", "pool_mode", None),
    ("databases", "name", "max_db_client_connections", "max_client_connections", 0),
)


def _share_differences(unit_name, unit, shares):
    out = []
    for show, key, setting, column, unset in _SHARE_COLUMNS:
        rows = {row.get(key): row for row in unit.get(show) or []}
        for name, planned in (shares.get(show) or {}).items():
            row = rows.get(name)
            if (row is not None and column not in row) or (unset is None and setting not in planned):
                continue  # this version does not print the limit, or it is not planned
            live = _text(row.get(column)).strip() if row is not None else ""
            wanted = _text(planned.get(setting, unset))
            if live != wanted:
                out.append({"unit": unit_name, "setting": f"{name}.{setting}", "live": live, "wanted": wanted,
                            "restart": False})
    return out


def pgbouncer_live_diff(units, instances, settings, databases, nofile_limit, restart_only, shares=None):
    """Differences between the running processes and the planned ones, in the order of the instances.

    ``units``: ``units`` of pgbouncer_info; ``instances``: the planned processes (``unit``,
    ``unix_socket_dir``, ``pidfile``, ``logfile``); ``settings``: the [pgbouncer] values every
    process shares; ``databases``: the planned [databases] entries (``name``, ``pool_size``);
    ``nofile_limit``: the planned LimitNOFILE; ``restart_only``: settings RELOAD cannot change;
    ``shares``: pgbouncer_shares' ``users`` and ``databases`` (SHOW USERS and SHOW DATABASES
    compared where the version prints the limits; a RELOAD applies them).
    Each difference is ``{unit, setting, live, wanted, restart}`` with ``live`` and ``wanted``
    as text, except LimitNOFILE's, which are the numbers; setting ``program`` means the
    package was upgraded under the running process. A process that does not run has no
    live values, so every value differs.
    """
    restart_only = set(restart_only)
    out = []
    for instance in instances:
        live = _unit(units, instance["unit"]).get("config") or {}
        wanted = dict(settings)
        wanted.update((key, instance[key]) for key in ("unix_socket_dir", "pidfile", "logfile"))
        for key, value in wanted.items():
            if _TRAILING_ZERO.sub("", _text(live.get(key))) != _text(value):
                out.append({"unit": instance["unit"], "setting": key, "live": _text(live.get(key)),
                            "wanted": _text(value), "restart": key in restart_only})
        nofile = _unit(units, instance["unit"]).get("nofile")
        if nofile is None or int(nofile) != int(nofile_limit):
            out.append({"unit": instance["unit"], "setting": "LimitNOFILE", "live": nofile,
                        "wanted": nofile_limit, "restart": True})
        # A package upgrade replaced the program under the running process.
        if _unit(units, instance["unit"]).get("program_replaced"):
            out.append({"unit": instance["unit"], "setting": "program", "live": "replaced on disk since start",
                        "wanted": "the installed one", "restart": True})
    for instance in instances:
        pools = {row["name"]: row["pool_size"] for row in _unit(units, instance["unit"]).get("databases") or []}
        for db in databases:
            if _text(pools.get(db["name"])) != _text(db["pool_size"]):
                out.append({"unit": instance["unit"], "setting": f"{db['name']}.pool_size",
                            "live": _text(pools.get(db["name"])), "wanted": _text(db["pool_size"]), "restart": False})
        if shares:
            out.extend(_share_differences(instance["unit"], _unit(units, instance["unit"]), shares))
    return out


def pgbouncer_retired(info, instances):
    """The units a new layout stops and the numbered processes whose files it removes.

    ``info``: the result of pgbouncer_info; ``instances``: the planned processes (``id`` 0 is
    Debian's single pgbouncer.service). Returns ``active``, ``enabled`` and ``loaded`` (units that
    run, start at boot and that systemd has loaded now), ``ids`` (numbers of the dropped processes, from their units and
    their ini files) and ``units`` (the units to stop and disable: the dropped numbered ones, and
    pgbouncer.service when several processes replace it).
    """
    units = info.get("units") or {}
    wanted = {int(instance["id"]) for instance in instances} - {0}
    numbers = {int(m.group(1)) for m in map(_NUMBERED_UNIT.match, units) if m}
    numbers |= {int(m.group(1)) for m in (_NUMBERED_INI.match(path.rsplit("/", 1)[-1]) for path in info.get("config_files") or {})
                if m}
    ids = sorted(numbers - wanted)
    return {
        "active": sorted(name for name, unit in units.items() if unit.get("active") == "active"),
        "enabled": sorted(name for name, unit in units.items() if unit.get("enabled") == "enabled"),
        "loaded": sorted(name for name, unit in units.items() if unit.get("load") not in ("not-found", "", None)),
        "ids": ids,
        "units": (["pgbouncer.service"] if len(instances) > 1 else []) + [f"pgbouncer@{n}.service" for n in ids],
    }


# What a file of each kind to write makes live (pgbouncer_files' kinds): the helpers, the
# directories and a last good copy need no reload.
WRITTEN_REASONS = (("userlist", "userlist.txt to write"), ("ini", "pgbouncer.ini to write"),
                   ("unit", "the unit files (pgbouncer@.service, the LimitNOFILE drop-in) to write"))


def pgbouncer_apply(to_write, info, instances, retired, live_before, allow_restart):
    """The reasons to make the host live, in a fixed order; [] on a no-op.

    ``to_write``: the plan's files that differ from the read (entries with a kind, lookup
    headroom.pg.rendered_files and filter paths_to_write); ``info``: the result of pgbouncer_info;
    ``instances``: the planned processes; ``retired``: pgbouncer_retired of them; ``live_before``:
    pgbouncer_live_diff of the first read; ``allow_restart``: pgbouncer_allow_restart.
    """
    if not isinstance(to_write, list) or not all(isinstance(entry, dict) and "kind" in entry for entry in to_write):
        raise AnsibleFilterError(f"pgbouncer_apply: to_write must be a list of file entries with a kind, got {to_write!r}")
    kinds = {entry["kind"] for entry in to_write}
    reasons = [reason for kind, reason in WRITTEN_REASONS if kind in kinds]
    stop = [unit for unit in retired["units"] if unit in retired["loaded"]]
    if stop:
        reasons.append(f"{', '.join(stop)} to stop and disable")
    if retired["ids"]:
        reasons.append(f"the files of process(es) {', '.join(map(str, retired['ids']))} to remove")
    if len(instances) == 1 and info.get("template_unit"):
        reasons.append("pgbouncer@.service to remove (one process)")
    running = set(retired["active"]) & set(retired["enabled"])
    start = [instance["unit"] for instance in instances if instance["unit"] not in running]
    if start:
        reasons.append(f"{', '.join(start)} to start or enable")
    # A run stopped between a write and its RELOAD leaves the files as planned and the processes
    # on the old values: they reload, instead of the check after it finding them not live.
    reload = sorted({d["setting"] for d in live_before if not d["restart"] and d["unit"] in retired["active"]})
    if reload:
        reasons.append(f"a reload for {', '.join(reload)} (not live)")
    restart = sorted({d["setting"] for d in live_before if d["restart"]})
    if allow_restart and restart:
        reasons.append(f"a restart for {', '.join(restart)} (pgbouncer_allow_restart)")
    return reasons


def pgbouncer_reload_errors(reloads):
    """The console RELOADs that answered an error (PgBouncer 1.25+), as differences like pgbouncer_live_diff's.

    ``reloads``: the registered result of the role's console RELOAD handler (a loop over the
    instances), or {} when it did not run. PgBouncer answers "RELOAD failed, see logs for
    additional details" and names the cause in the process's log.
    """
    if not isinstance(reloads, dict):
        raise AnsibleFilterError(f"pgbouncer_reload_errors: reloads must be a registered loop result, got {reloads!r}")
    out = []
    for result in reloads.get("results") or ():
        if result.get("skipped") or result.get("rc", 0) == 0:
            continue
        instance = result.get("instance") or {}
        answer = (result.get("stderr") or result.get("msg") or "").strip()
        out.append({"unit": instance.get("unit", ""), "setting": "RELOAD", "live": answer,
                    "wanted": f"RELOAD without error (the cause is in {instance.get('logfile', 'the log')})",
                    "restart": False})
    return out


class FilterModule:
    """Comparisons of the live PgBouncer with the planned one."""

    def filters(self):
        return {"pgbouncer_live_diff": pgbouncer_live_diff, "pgbouncer_retired": pgbouncer_retired,
                "pgbouncer_apply": pgbouncer_apply, "pgbouncer_reload_errors": pgbouncer_reload_errors}
