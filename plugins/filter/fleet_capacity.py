"""The fleet_capacity filters: what a live fleet holds, per server, per PgBouncer host and per application,
against what the inventory declared, with flags that each carry a level.

capacity.yml probes every server (pg_stat_activity), every PgBouncer process (SHOW POOLS,
STATS, DATABASES, CLIENTS, SERVERS) and every pgpool-II node (SHOW pool_pools);
``capacity_declarations`` reads the declarations with
fleet_plan's own parsers (same checks, same counting: connections x instances), and
``fleet_capacity`` adds the probes up against them. Nothing here connects to anything.

Warning and critical thresholds (``connection_budget_capacity_thresholds``) follow two tools:

* slots in use: check_postgres's ``backends`` action defaults, warning at 90% and critical at
  95% of the available connections (check_postgres.pl, ``check_backends``: ``$opt{warning} || '90%'``,
  ``$opt{critical} || '95%'``);
* idle in transaction: pganalyze's "Idle Transactions" check defaults, warning after 1800 s,
  critical after 3600 s (https://pganalyze.com/docs/checks/connections/idle_transaction);
  check_postgres's ``txn_idle`` has no defaults (both must be given);
* clients waiting in PgBouncer: any ``cl_waiting`` is a warning (neither tool has a default for
  ``pgb_pool_cl_waiting`` / ``pgb_pool_maxwait``); critical once ``maxwait`` reaches 60 s, half of
  PgBouncer's default ``query_wait_timeout`` (120 s), after which PgBouncer drops the client.
"""

import csv
import io
import json
import shlex
from collections.abc import Mapping
from datetime import datetime, timezone

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.connection_budget import client_connections
from ansible_collections.headroom.pg.plugins.filter.fleet_plan import (
    _addresses,
    _direct_clients,
    _external_servers,
    _model_variables,
    _pgbouncer_clients,
    _pgpool_backends,
    _plain,
    _resolve_target,
    _var,
)
from ansible_collections.headroom.pg.plugins.filter.pgpool_sizing import pgpool_demand

#: The defaults of connection_budget_capacity_thresholds, with their sources in the module docstring.
DEFAULT_THRESHOLDS = {
    "slots_share": 0.9,
    "slots_share_critical": 0.95,
    "idle_in_transaction_seconds": 1800,
    "idle_in_transaction_seconds_critical": 3600,
    "idle_per_application": 10,
    "pool_maxwait_seconds_critical": 60,
}
#: Each warning threshold and the critical one it may not exceed.
THRESHOLD_PAIRS = (
    ("slots_share", "slots_share_critical"),
    ("idle_in_transaction_seconds", "idle_in_transaction_seconds_critical"),
)
LEVELS = ("critical", "warning")
IDLE_IN_TRANSACTION = ("idle in transaction", "idle in transaction (aborted)")
TERMINATE_PLAYBOOK = "playbooks/terminate-idle.yml"
#: What the declarations read on a PgBouncer host and on a server; defaults as the roles give them.
POOLER_NAMES = ("pgbouncer_databases", "headroom_pgbouncer_clients", "pgbouncer_auth_mode", "pgbouncer_auth_user")
SERVER_NAMES = ("ansible_host",)
PGPOOL_NAMES = ("pgpool_backends", "pgpool_health_check_user", "pgpool_cancel_headroom")
#: PgBouncer's time format in SHOW CLIENTS and SHOW SERVERS (connect_time, request_time).
PGBOUNCER_TIME = "%Y-%m-%d %H:%M:%S %Z"
#: Server connections of a PgBouncer pool, by SHOW POOLS column.
SERVER_STATES = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")


def _number(value, key, integer):
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError) as err:
        raise AnsibleFilterError(f"connection_budget_capacity_thresholds.{key} must be a number, got {value!r}") from err
    if isinstance(value, bool) or number < 0:
        raise AnsibleFilterError(f"connection_budget_capacity_thresholds.{key} must be a number >= 0, got {value!r}")
    return number


def _thresholds(given):
    """The thresholds with the defaults filled in, checked: numbers, each warning at most its critical."""
    given = dict(given or {})
    unknown = sorted(str(key) for key in given if key not in DEFAULT_THRESHOLDS)
    if unknown:
        raise AnsibleFilterError(
            f"connection_budget_capacity_thresholds has unknown key(s) {', '.join(unknown)}; allowed are "
            f"{', '.join(DEFAULT_THRESHOLDS)}"
        )
    limits = {
        key: _number(given.get(key, default), key, isinstance(default, int))
        for key, default in DEFAULT_THRESHOLDS.items()
    }
    for warning, critical in THRESHOLD_PAIRS:
        if limits[warning] > limits[critical]:
            raise AnsibleFilterError(
                f"connection_budget_capacity_thresholds: {warning} ({limits[warning]}) is above {critical} "
                f"({limits[critical]}); raise {critical} too"
            )
    return limits


def _level(value, warning, critical):
    if value >= critical:
        return "critical"
    return "warning" if value >= warning else None


def _flag(level, subject, message, command=None, application=None):
    return {"level": level, "subject": subject, "message": message, "command": command, "application": application}


def _count_by(sessions, key):
    counts = {}
    for session in sessions:
        name = session.get(key)
        name = "" if name is None else str(name)
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _oldest(sessions, states):
    picked = [s for s in sessions if s.get("state") in states]
    return max(picked, key=lambda s: s.get("state_seconds") or 0) if picked else None


def _age(session):
    return session.get("state_seconds") or 0


def capacity_declarations(hostvars, groups, direct_clients=None, defaults=None, external_servers=None):
    """What the inventory declares, in the shape fleet_capacity matches sessions against.

    Direct clients (headroom_direct_clients) and each PgBouncer host's applications
    (headroom_pgbouncer_clients) go through fleet_plan's parsers, so a bad entry fails here with
    the message plan.yml gives; each budget is connections x instances. Per PgBouncer host also
    the server each pgbouncer_databases entry reaches and the users whose server sessions are its
    pools (named users, and the auth user in auth_query mode). A server outside the inventory
    (headroom_external_servers) is a target like any other; nothing probes it.
    """
    defaults = {name: _plain(value) for name, value in (defaults or {}).items() if name in POOLER_NAMES + PGPOOL_NAMES}
    servers = list(groups.get("postgresql") or [])
    poolers = list(groups.get("pgbouncer") or [])
    pgpool_nodes = list(groups.get("pgpool") or [])
    plain_groups = {name: list(members or []) for name, members in groups.items()}
    models = {host: _model_variables(hostvars[host], SERVER_NAMES) for host in servers}
    for host in poolers:
        models[host] = models.get(host, {}) | _model_variables(hostvars[host], POOLER_NAMES)
    for host in pgpool_nodes:
        models[host] = models.get(host, {}) | _model_variables(hostvars[host], PGPOOL_NAMES)
    external = _external_servers(_plain(external_servers), hostvars)
    direct = []
    for client in _direct_clients(_plain(direct_clients), plain_groups, set(servers), external):
        connections, instances = client_connections(client, str(client["name"]))
        direct.append(
            {
                "name": str(client["name"]),
                "target": client["target"],
                "role": client.get("role"),
                "reserved": bool(client.get("reserved", False)),
                "connections": connections,
                "instances": instances,
                "declared": connections * instances,
            }
        )
    addresses = _addresses(models, servers, external)
    declared_poolers = {}
    for pooler in poolers:
        entries = _var(models, pooler, "pgbouncer_databases", defaults) or []
        if not isinstance(entries, list):
            raise AnsibleFilterError(f"pgbouncer host {pooler}: pgbouncer_databases must be a list, got {entries!r}")
        auth_query = _var(models, pooler, "pgbouncer_auth_mode", defaults) == "auth_query"
        auth_user = _var(models, pooler, "pgbouncer_auth_user", defaults) if auth_query else None
        databases, users = {}, {}
        for index, entry in enumerate(entries):
            what = f"pgbouncer host {pooler}: pgbouncer_databases[{index}]"
            if not isinstance(entry, Mapping) or not entry.get("name"):
                raise AnsibleFilterError(f"{what} must be a mapping with a name, got {entry!r}")
            target = _resolve_target(entry, pooler, set(servers) | set(external), addresses, f"{what} ({entry['name']})")
            databases[str(entry["name"])] = target
            named = entry["users"] if isinstance(entry.get("users"), list) else []
            for user in [*named, *([auth_user] if auth_user else [])]:
                users.setdefault(str(user), [])
                if target not in users[str(user)]:
                    users[str(user)].append(target)
        declared_poolers[pooler] = {
            "databases": databases,
            "users": users,
            "auth_user": auth_user,
            "applications": _pgbouncer_clients(models, pooler, plain_groups, list(databases)),
        }
    declared_pgpool = {}
    for node in pgpool_nodes:
        backends = _pgpool_backends(models, node, set(servers) | set(external), addresses, defaults)
        declared_pgpool[node] = {
            # In pgpool.conf's order: backend N is the Nth entry (SHOW pool_pools backend_id).
            "backends": [backend["target"] for backend in backends],
            "health_check_user": str(_var(models, node, "pgpool_health_check_user", defaults) or ""),
            "cancel_headroom": bool(_var(models, node, "pgpool_cancel_headroom", defaults)),
        }
    return {"direct": direct, "poolers": declared_poolers, "pgpool": declared_pgpool}


def _terminate_command(host, states, min_age, selection, sessions, auth_users):
    """The terminate-idle.yml dry run (no headroom_terminate_confirm) that selects these sessions."""
    extra = {"headroom_terminate_states": list(states), "headroom_terminate_min_age": int(min_age)} | selection
    if any(session.get("superuser") for session in sessions):
        extra["headroom_terminate_superusers"] = True
    if any(session.get("usename") in auth_users for session in sessions):
        extra["headroom_terminate_pgbouncer_auth"] = True
    return f"ansible-playbook {TERMINATE_PLAYBOOK} -l {shlex.quote(host)} -e {shlex.quote(json.dumps(extra))}"


def _selection(entry):
    """terminate-idle's filters that pick an application's sessions on its server."""
    if entry["kind"] == "unnamed":
        return {"headroom_terminate_applications": [""], "headroom_terminate_users": [entry["role"]]}
    if entry["kind"] in ("pgbouncer", "pgpool"):
        return {"headroom_terminate_users": entry["users"], "headroom_terminate_databases": entry["databases"]}
    return {"headroom_terminate_applications": [entry["application_name"]]}


def _pool_rows(probes, declared):
    """Every pool of a PgBouncer host's processes (SHOW POOLS), with its size (SHOW DATABASES) and target server."""
    pools = []
    databases = (declared or {}).get("databases", {})
    for probe in probes:
        sizes = {row.get("name"): row for row in probe.get("databases") or []}
        for row in probe.get("pools") or []:
            if row.get("database") == "pgbouncer":
                continue
            size = sizes.get(row.get("database"), {})
            wait = float(row.get("maxwait") or 0) + float(row.get("maxwait_us") or 0) / 1e6
            pools.append(
                {
                    "unit": probe["unit"],
                    "database": row.get("database"),
                    "user": row.get("user"),
                    "target": databases.get(row.get("database")),
                    "clients_active": int(row.get("cl_active") or 0),
                    "clients_waiting": int(row.get("cl_waiting") or 0),
                    "servers_active": int(row.get("sv_active") or 0),
                    "servers_idle": int(row.get("sv_idle") or 0),
                    "servers_used": int(row.get("sv_used") or 0),
                    "server_connections": sum(int(row.get(key) or 0) for key in SERVER_STATES),
                    "pool_size": int(size.get("pool_size") or 0) + int(size.get("reserve_pool") or 0),
                    "max_db_connections": int(size.get("max_connections") or 0),
                    "max_wait_seconds": round(wait, 6),
                    "pool_mode": row.get("pool_mode"),
                }
            )
    return pools


def _pool_budget(pools):
    """The server connections a host's pools may open: pool_size + reserve_pool per pool, capped per
    process and database by max_db_connections, as PgBouncer enforces them."""
    per_database, caps = {}, {}
    for pool in pools:
        key = (pool["unit"], pool["database"])
        per_database[key] = per_database.get(key, 0) + pool["pool_size"]
        caps[key] = pool["max_db_connections"]
    return sum(min(total, caps[key]) if caps[key] > 0 else total for key, total in per_database.items())


def _seconds_since(stamp, now):
    try:
        then = datetime.strptime(str(stamp), PGBOUNCER_TIME).replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return max(0, int(now - then.timestamp()))


def _client_entries(pooler, probes, declared, pools, now):
    """PgBouncer's clients (SHOW CLIENTS) per application: by application_name == a declared name,
    else by user when exactly one declaration on this host names that user; else undeclared."""
    applications = (declared or {}).get("applications", [])
    by_name = {app["name"]: app for app in applications}
    by_user = {}
    for app in applications:
        if app.get("user"):
            by_user.setdefault(app["user"], []).append(app)
    groups = {app["name"]: {"app": app, "clients": []} for app in applications}
    for probe in probes:
        for row in probe.get("clients") or []:
            if row.get("database") == "pgbouncer":
                continue
            client = dict(row, unit=probe["unit"])
            name = row.get("application_name") or ""
            if name in by_name:
                key = name
            elif len(by_user.get(row.get("user"), [])) == 1:
                key = by_user[row.get("user")][0]["name"]
            elif name:
                key = ("application", name)
            else:
                key = ("unnamed", row.get("user"), row.get("addr"))
            groups.setdefault(key, {"app": None, "clients": []})["clients"].append(client)
    entries = []
    for key, group in groups.items():
        clients, app = group["clients"], group["app"]
        used = {(c.get("database"), c.get("user")) for c in clients}
        used_pools = [p for p in pools if (p["database"], p["user"]) in used]
        ages = [_seconds_since(c.get("request_time"), now) for c in clients if c.get("state") != "waiting"]
        ages = [age for age in ages if age is not None]
        kind = "pgbouncer-client" if app else key[0]
        entries.append(
            {
                "where": pooler,
                "host": pooler,
                "kind": kind,
                "application_name": app["name"] if app else (key[1] if kind == "application" else ""),
                "role": (app.get("user") if app else None) or ", ".join(sorted({str(c.get("user")) for c in clients})),
                "users": sorted({str(c.get("user")) for c in clients}),
                "databases": sorted({str(c.get("database")) for c in clients}),
                "client_addrs": sorted({str(c.get("addr")) for c in clients}),
                "declared": app["client_connections"] if app else None,
                "held": len(clients),
                "over": max(0, len(clients) - app["client_connections"]) if app else None,
                "by_state": _count_by(clients, "state"),
                "idle": None,
                "idle_in_transaction": None,
                # A client's idle time is the time since its last request (request_time).
                "oldest_idle_seconds": max(ages) if ages else None,
                "oldest_idle_in_transaction_seconds": None,
                "clients_waiting": sum(p["clients_waiting"] for p in used_pools),
                "max_wait_seconds": max((p["max_wait_seconds"] for p in used_pools), default=0.0),
                "pids": [],
            }
        )
    return entries


def _pooler_capacity(name, probes, limits, declared, now):
    pools = _pool_rows(probes, declared)
    stats = [
        {"unit": probe["unit"]} | dict(row)
        for probe in probes
        for row in probe.get("stats") or []
        if row.get("database") != "pgbouncer"
    ]
    flags = []
    for pool in pools:
        if pool["clients_waiting"]:
            critical = pool["max_wait_seconds"] >= limits["pool_maxwait_seconds_critical"]
            flags.append(_flag(
                "critical" if critical else "warning", name,
                f"{name}: {pool['clients_waiting']} client(s) of pool {pool['user']}@{pool['database']} "
                f"({pool['unit']}) wait for a server connection (max wait {pool['max_wait_seconds']:.3f}s)",
            ))
    applications = _client_entries(name, probes, declared, pools, now)
    for app in applications:
        label = _label(app)
        if app["kind"] == "pgbouncer-client" and app["over"]:
            flags.append(_flag(
                "warning", name,
                f"{name}: {label} holds {app['held']} PgBouncer client connections, {app['over']} over its declared "
                f"{app['declared']} (headroom_pgbouncer_clients)", application=_key(app),
            ))
        elif app["kind"] in ("application", "unnamed") and app["held"]:
            flags.append(_flag(
                "warning", name,
                f"{name}: {label} holds {app['held']} PgBouncer client connections and is declared nowhere "
                "(headroom_pgbouncer_clients)", application=_key(app),
            ))
    waiting = sum(pool["clients_waiting"] for pool in pools)
    return {
        "pools": pools,
        "stats": stats,
        "clients_waiting": waiting,
        "max_wait_seconds": max((pool["max_wait_seconds"] for pool in pools), default=0.0),
        "applications": applications,
        "flags": flags,
    }


def _csv_rows(text):
    """The rows psql --csv printed, each a dict by column name."""
    return list(csv.DictReader(io.StringIO(text if isinstance(text, str) else "")))


def _pgpool_capacity(name, probe, declared):
    """A pgpool-II node: its children and pool, and per backend server the connections its children
    cache, from SHOW pool_pools (a row per child, pool and backend; a cached one has its backend's
    PID), against what the budget counts for one node: num_init_children x max_pool (x 2) + checks
    + closing margin."""
    rows = _csv_rows(probe.get("pools"))
    backends = (declared or {}).get("backends", [])
    children, max_pool = len({row.get("pool_pid") for row in rows}), len({row.get("pool_id") for row in rows})
    allowance = None
    if children and max_pool:
        spec = {"num_init_children": children, "max_pool": max_pool,
                "cancel_headroom": bool((declared or {}).get("cancel_headroom"))}
        allowance = pgpool_demand(spec)["connections"]
    pids = {}
    for row in rows:
        pid, index = int(row.get("pool_backendpid") or 0), int(row.get("backend_id") or -1)
        if pid and 0 <= index < len(backends):
            pids[(backends[index], pid)] = name
    return {
        "num_init_children": children,
        "max_pool": max_pool,
        "declared_per_backend": allowance,
        "backends": [
            {"target": target, "cached_connections": sum(1 for (where, _pid) in pids if where == target)}
            for target in dict.fromkeys(backends)
        ],
        "_pids": pids,
    }


def _label(entry):
    if entry["kind"] == "unnamed":
        return f"sessions without application_name of role {entry['role']!r} from {', '.join(entry['client_addrs'])}"
    if entry["kind"] == "pgbouncer":
        return f"PgBouncer {entry['application_name']}'s pools"
    if entry["kind"] == "pgpool":
        return f"pgpool-II {entry['application_name']}'s children and checks"
    return f"application {entry['application_name']!r}"


def _key(entry):
    return f"{entry['where']}|{entry['kind']}|{entry['application_name']}|{entry['role'] or ''}|" + ",".join(
        entry["client_addrs"]
    )


def _pgbouncer_sessions(host, declarations, pooler_probes):
    """Per PgBouncer host whose pools reach ``host``: the PIDs its server connections have there
    (SHOW SERVERS remote_pid), and the users whose sessions are its pools."""
    pids, users = {}, {}
    for pooler, declared in (declarations.get("poolers") or {}).items():
        if host not in declared["databases"].values():
            continue
        for probe in pooler_probes.get(pooler) or []:
            for row in probe.get("servers") or []:
                if declared["databases"].get(row.get("database")) == host and str(row.get("remote_pid") or "0") != "0":
                    pids[int(row["remote_pid"])] = pooler
        for user, targets in declared["users"].items():
            if host in targets:
                users.setdefault(user, []).append(pooler)
    return pids, users


def _server_entries(name, host, sessions, declarations, pooler_probes, pooler_pools, pgpool):
    """The server's sessions per application. Rules, in order: application_name == the name of a
    direct client declared for this server; else a PgBouncer host's pool (its server connection's
    PID); else a pgpool-II node's (the PID of a child's cached connection, SHOW pool_pools); else
    a PgBouncer host's by user (of its pgbouncer_databases entries that reach this server); else
    a pgpool-II node's checks (its health check user, when its backends reach this server); else
    an undeclared application by application_name, or, without one, by role and client address."""
    direct = {}
    for client in declarations.get("direct") or []:
        if client["target"] == host:
            direct.setdefault(client["name"], []).append(client)
    pids, users = _pgbouncer_sessions(host, declarations, pooler_probes)
    pgpool_pids = {pid: node for report in pgpool.values() for (target, pid), node in report["_pids"].items()
                   if target == host}
    check_users = {}
    for node, declared in (declarations.get("pgpool") or {}).items():
        if host in declared["backends"] and declared["health_check_user"]:
            check_users.setdefault(declared["health_check_user"], []).append(node)
    groups = {("direct", app): [] for app in direct}
    for session in sessions:
        app = session.get("application_name") or ""
        if app in direct:
            key = ("direct", app)
        elif session.get("pid") in pids:
            key = ("pgbouncer", pids[session["pid"]])
        elif session.get("pid") in pgpool_pids:
            key = ("pgpool", pgpool_pids[session["pid"]])
        elif session.get("usename") in check_users and session.get("usename") not in users:
            key = ("pgpool", "+".join(sorted(check_users[session["usename"]])))
        elif session.get("usename") in users:
            key = ("pgbouncer", "+".join(sorted(users[session["usename"]])))
        elif app:
            key = ("application", app)
        else:
            key = ("unnamed", session.get("usename") or "", session.get("client_addr") or "socket")
        groups.setdefault(key, []).append(session)
    entries = []
    for key, members in groups.items():
        kind = key[0]
        declared, role = None, None
        if kind == "direct":
            declared = sum(client["declared"] for client in direct[key[1]])
            role = ", ".join(sorted({client["role"] for client in direct[key[1]] if client["role"]})) or None
        elif kind == "pgbouncer":
            mine = [p for pooler in key[1].split("+") for p in pooler_pools.get(pooler, []) if p["target"] == host]
            declared = _pool_budget(mine)
        elif kind == "pgpool":
            allowances = [pgpool.get(node, {}).get("declared_per_backend") for node in key[1].split("+")]
            declared = None if None in allowances else sum(allowances)
        elif kind == "unnamed":
            role = key[1]
        idle = [s for s in members if s.get("state") == "idle"]
        in_transaction = [s for s in members if s.get("state") in IDLE_IN_TRANSACTION]
        pools = [p for pooler in key[1].split("+") for p in pooler_pools.get(pooler, []) if p["target"] == host] \
            if kind == "pgbouncer" else []
        entries.append(
            {
                "where": name,
                "host": host,
                "kind": kind,
                "application_name": key[1] if kind != "unnamed" else "",
                "role": role or (", ".join(sorted({str(s.get("usename")) for s in members})) or None),
                "users": sorted({str(s.get("usename")) for s in members}),
                "databases": sorted({str(s.get("datname")) for s in members}),
                "client_addrs": [key[2]] if kind == "unnamed" else sorted({s.get("client_addr") or "socket" for s in members}),
                "declared": declared,
                "held": len(members),
                "over": max(0, len(members) - declared) if declared is not None else None,
                "by_state": _count_by(members, "state"),
                "idle": len(idle),
                "idle_in_transaction": len(in_transaction),
                "oldest_idle_seconds": max(map(_age, idle)) if idle else None,
                "oldest_idle_in_transaction_seconds": max(map(_age, in_transaction)) if in_transaction else None,
                "clients_waiting": sum(p["clients_waiting"] for p in pools) if pools else None,
                "max_wait_seconds": max(p["max_wait_seconds"] for p in pools) if pools else None,
                "pids": sorted(s.get("pid") for s in members),
                "_sessions": members,
            }
        )
    return entries


def _application_flags(name, entries, limits, slots_level, auth_users):
    """Over its declaration, declared nowhere, idle in transaction too long: one flag each, per application."""
    flags = []
    for entry in entries:
        sessions, label, host = entry["_sessions"], _label(entry), entry["host"]
        if entry["over"]:
            idle = sorted((s for s in sessions if s.get("state") == "idle"), key=_age, reverse=True)
            # The oldest idle sessions, as many as it holds over its declaration (or all of its idle ones).
            freed = idle[: entry["over"]]
            command = (
                _terminate_command(host, ["idle"], _age(freed[-1]), _selection(entry), freed, auth_users) if freed else None
            )
            flags.append(_flag(
                "critical" if slots_level == "critical" else "warning", name,
                f"{name}: {label} holds {entry['held']} connections, {entry['over']} over its declared "
                f"{entry['declared']}" + (f"; ending its {len(freed)} longest-idle session(s) frees them" if freed else ""),
                command, _key(entry),
            ))
        elif entry["kind"] == "direct" and entry["declared"] and entry["held"] >= entry["declared"] and entry["idle"]:
            # At its share with sessions idle: a leak or a pool larger than its share. With a role,
            # PostgreSQL refuses its next login (CONNECTION LIMIT, docs/budget.md).
            idle = sorted((s for s in sessions if s.get("state") == "idle"), key=_age, reverse=True)
            refused = "its role's CONNECTION LIMIT refuses its next login" if entry["role"] else "its next one is over it"
            flags.append(_flag(
                "warning", name,
                f"{name}: {label} holds all {entry['declared']} of its declared connections, {len(idle)} of them idle "
                f"(oldest {_age(idle[0])}s): {refused}; a leak, or a pool larger than its share",
                _terminate_command(host, ["idle"], _age(idle[-1]), _selection(entry), idle, auth_users),
                _key(entry),
            ))
        elif entry["kind"] in ("application", "unnamed") and entry["held"]:
            flags.append(_flag(
                "warning", name,
                f"{name}: {label} holds {entry['held']} connections and is declared nowhere (headroom_direct_clients)",
                application=_key(entry),
            ))
        stuck = [s for s in sessions if s.get("state") in IDLE_IN_TRANSACTION
                 and _age(s) >= limits["idle_in_transaction_seconds"]]
        if stuck:
            oldest = max(map(_age, stuck))
            level = _level(oldest, limits["idle_in_transaction_seconds"], limits["idle_in_transaction_seconds_critical"])
            flags.append(_flag(
                level, name,
                f"{name}: {label}: {len(stuck)} session(s) idle in transaction for "
                f"{limits['idle_in_transaction_seconds']}s or more (oldest {oldest}s; pid "
                f"{', '.join(str(s.get('pid')) for s in sorted(stuck, key=_age, reverse=True))})",
                _terminate_command(host, IDLE_IN_TRANSACTION, limits["idle_in_transaction_seconds"], _selection(entry),
                                   stuck, auth_users),
                _key(entry),
            ))
    return flags


def _server_capacity(name, probe, limits, declarations, pooler_probes, pooler_pools, pgpool):
    sessions = probe["sessions"]
    host = probe.get("host") or name
    max_connections = int(probe["max_connections"])
    reserved = int(probe["superuser_reserved_connections"]) + int(probe.get("reserved_connections") or 0)
    ordinary = max_connections - reserved
    used = len(sessions)
    idle = [s for s in sessions if s.get("state") == "idle"]
    report = {
        "host": host,
        "max_connections": max_connections,
        "reserved": reserved,
        "used": used,
        "free": ordinary - used,
        "used_share": round(used / ordinary, 4) if ordinary > 0 else 1.0,
        "in_recovery": bool(probe.get("in_recovery")),
        "by_state": _count_by(sessions, "state"),
        "by_database": _count_by(sessions, "datname"),
        "by_user": _count_by(sessions, "usename"),
        "by_application": _count_by(sessions, "application_name"),
        "by_client": _count_by(sessions, "client_addr"),
        "oldest_idle": _oldest(sessions, ("idle",)),
        "oldest_idle_in_transaction": _oldest(sessions, IDLE_IN_TRANSACTION),
        "flags": [],
    }
    slots_level = _level(report["used_share"], limits["slots_share"], limits["slots_share_critical"])
    if slots_level:
        report["flags"].append(_flag(
            slots_level, name,
            f"{name} uses {used} of its {ordinary} ordinary slots ({report['used_share']:.0%}), at or above "
            f"{limits['slots_share' if slots_level == 'warning' else 'slots_share_critical']:.0%}",
        ))
    auth_users = {p["auth_user"] for p in (declarations.get("poolers") or {}).values() if p.get("auth_user")}
    entries = _server_entries(name, host, sessions, declarations, pooler_probes, pooler_pools, pgpool)
    report["flags"] += _application_flags(name, entries, limits, slots_level, auth_users)
    for application, count in _count_by(idle, "application_name").items():
        if count >= limits["idle_per_application"]:
            mine = [s for s in idle if (s.get("application_name") or "") == application]
            report["flags"].append(_flag(
                "warning", name,
                f"{name}: application {application!r} holds {count} idle connections (a pool too large or a leak)",
                _terminate_command(host, ["idle"], min(map(_age, mine)), {"headroom_terminate_applications": [application]},
                                   mine, auth_users),
            ))
    for entry in entries:
        entry.pop("_sessions")
    return report, entries


def fleet_capacity(server_probes, pooler_probes=None, thresholds=None, declarations=None, now=None, pgpool_probes=None):
    """Slots per server, pools per PgBouncer host and pgpool-II node, and per application declared against observed.

    server_probes: per server, the probe capacity.yml runs (max_connections, reserved slots,
    in_recovery, ``host`` (its inventory hostname), and every client backend but the probe's own
    with pid, datname, usename, superuser, application_name, client_addr, state, state_seconds).
    Free slots are max_connections minus superuser_reserved_connections and reserved_connections
    minus the sessions. pooler_probes: per PgBouncer host, a list of {unit, pools, stats,
    databases, clients, servers: the rows of SHOW POOLS, STATS, DATABASES, CLIENTS, SERVERS}.
    declarations: capacity_declarations' result. now: the probe's time (epoch seconds), for the
    age of PgBouncer clients (request_time). pgpool_probes: per pgpool-II node, ``pools``, what
    psql --csv printed for SHOW pool_pools. Flags carry a
    level, warning or critical, and for idle or idle-in-transaction sessions the terminate-idle.yml
    dry run that frees them.
    """
    limits = _thresholds(thresholds)
    declarations = declarations or {}
    pooler_probes = pooler_probes or {}
    now = float(now) if now is not None else datetime.now(timezone.utc).timestamp()
    poolers = {
        name: _pooler_capacity(name, probes, limits, (declarations.get("poolers") or {}).get(name), now)
        for name, probes in sorted(pooler_probes.items())
    }
    pooler_pools = {name: report["pools"] for name, report in poolers.items()}
    pgpool = {
        name: _pgpool_capacity(name, probe, (declarations.get("pgpool") or {}).get(name))
        for name, probe in sorted((pgpool_probes or {}).items())
    }
    servers, applications = {}, []
    for name, probe in sorted(server_probes.items()):
        servers[name], entries = _server_capacity(name, probe, limits, declarations, pooler_probes, pooler_pools,
                                                  pgpool)
        applications += entries
    for report in pgpool.values():
        report.pop("_pids")
    for report in poolers.values():
        applications += report.pop("applications")
    flags = [flag for report in [*servers.values(), *poolers.values()] for flag in report["flags"]]
    flags.sort(key=lambda flag: LEVELS.index(flag["level"]))
    worst = {}
    for flag in flags:
        if flag["application"] and flag["application"] not in worst:
            worst[flag["application"]] = flag["level"]
    for entry in applications:
        entry["level"] = worst.get(_key(entry))
    return {"thresholds": limits, "servers": servers, "poolers": poolers, "pgpool": pgpool, "applications": applications,
            "flags": flags}


def fleet_capacity_lines(report):
    """The flags of a fleet_capacity result for the console: level, message, and the dry run that frees them."""
    lines = []
    for flag in report["flags"]:
        lines.append(f"{flag['level'].upper()}: {flag['message']}")
        if flag.get("command"):
            lines.append(f"  free them (dry run): {flag['command']}")
    return lines or [
        f"No flags: every server below {report['thresholds']['slots_share']:.0%} of its slots, every application "
        "within its declaration."
    ]


class FilterModule:
    """Capacity filters."""

    def filters(self):
        return {
            "capacity_declarations": capacity_declarations,
            "fleet_capacity": fleet_capacity,
            "fleet_capacity_lines": fleet_capacity_lines,
        }
