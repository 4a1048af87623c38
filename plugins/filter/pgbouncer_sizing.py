"""The pgbouncer_tune filter: PgBouncer pools, processes and file descriptors for one host.

Facts it relies on (PgBouncer documentation and source, and facts.md):

* Pools are per (database entry, user) pair and per process. A database entry with a
  forced ``user`` has a single pool. ``max_db_connections`` caps one database entry
  in one process; nothing caps processes or hosts together, which is why this filter
  and pg_connection_budget count them.
* PgBouncer is single-threaded: one process uses at most one core. Several processes
  share a port with ``so_reuseport`` (1.12+).
* In auth_query mode each database entry has one more pool, the auth user's, which runs
  the lookups (``auth_user`` on the entry); ``max_db_connections`` caps it together with
  the users' pools, so it counts as one more user (``pools`` of each sized entry).
* At start PgBouncer expects ``max_client_conn + 10 + sum over databases of
  pool_size x users`` file descriptors (``check_limits`` in src/main.c), where users are
  all the users it knows (auth_file, ``[users]``, auth users), and only logs a mismatch,
  so the limit has to be set by whoever starts it.
* ``max_user_connections`` (a ``[users]`` line, every version) caps the server connections
  of one user over all its pools in one process (src/loader.c ``parse_user``). The share of
  a named user is what its pools can open: the sum over the entries naming it of
  ``min(pool_size + reserve_pool_size, max_db_connections)``.
* ``max_client_conn`` is per process: with ``so_reuseport`` the kernel hands each new TCP
  connection to one process by a hash of its addresses (pgbouncer.org, so_reuseport), not
  evenly, and a client of one process's Unix socket always reaches that process.
"""

import math
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_inputs import (
    as_choice,
    as_count_or_names,
    as_int,
    as_size,
    check_keys,
)
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_sizing import (
    SPARE_RULE,
    best_active_connections,
    default_spare,
)
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_units import KB, describe_size

#: PgBouncer's own defaults.
PGBOUNCER_DEFAULT_POOL_SIZE = 20
PGBOUNCER_DEFAULT_RESERVE_POOL_SIZE = 0

#: Client connections when the spec gives none: enough for a typical application fleet,
#: and cheap (see CONNECTION_MEMORY); PgBouncer's own default is 100.
DEFAULT_MAX_CLIENT_CONN = 1000

#: max_client_conn sized from a declared client demand never goes below PgBouncer's own
#: default (pgbouncer.org: "Default: 100"): room for the admin console and an operator's psql.
MIN_SIZED_MAX_CLIENT_CONN = 100

#: Transactions per second one PgBouncer process is planned for. The lab measured about
#: 23k tps through one process sharing 2 cores with PostgreSQL (facts.md); planning for
#: 20k leaves some room. Idle clients cost no CPU, so without expected_tps one process.
TPS_PER_PROCESS = 20000

#: "Low memory requirements (2 kB per connection by default)" (pgbouncer.org).
CONNECTION_MEMORY = 2 * KB

#: Headroom over PgBouncer's expected descriptor count: 10% plus 100 for log files,
#: listening sockets, peers and DNS; never below the usual soft limit of 1024.
NOFILE_FACTOR = 1.1
NOFILE_EXTRA = 100
NOFILE_MIN = 1024

POOL_MODES = ("transaction", "session", "statement")

SPEC_REQUIRED = ("cpus", "databases")
SPEC_OPTIONAL = (
    "memory",
    "max_client_conn",
    "server_connection_allowance",
    "server_cpus",
    "pool_mode",
    "processes",
    "expected_tps",
    "default_pool_size",
    "reserve_pool_size",
    "auth_query",
    "client_demand",
    "auth_user",
    "peers",
)
DATABASE_REQUIRED = ("name",)
DATABASE_OPTIONAL = ("users", "user", "pool_size", "reserve_pool_size", "max_db_connections", "target", "pool_mode")

#: The pgbouncer role's sizing inputs (pgbouncer_<name>) where 0 means "let the engine choose".
CHOSEN_AT_ZERO = ("server_connection_allowance", "server_cpus", "processes", "expected_tps", "default_pool_size")
#: What of a pgbouncer_databases entry sizes its pools (host, port and dbname only say where it goes).
SIZED_DATABASE_KEYS = ("name", "users", "pool_size", "reserve_pool_size", "max_db_connections")


def _check_database(entry, position, pool_mode, auth_pools):
    what = f"databases[{position}]"
    check_keys(entry, DATABASE_REQUIRED, DATABASE_OPTIONAL, what)
    name = entry["name"]
    if not isinstance(name, str) or not name:
        raise AnsibleFilterError(f"{what}.name must be a non-empty string, got {name!r}")
    forced_user = entry.get("user")
    if forced_user is None and entry.get("users") is None:
        raise AnsibleFilterError(f"{what} ({name}) needs users: a count or a list of the users that connect through it")
    users = as_count_or_names(entry.get("users", 1), f"{what}.users")
    if forced_user is not None and users != 1:
        raise AnsibleFilterError(
            f"{what} ({name}) forces user {forced_user!r}, so it has one pool; users {entry['users']!r} does not apply"
        )
    checked = {
        "name": name,
        "users": users,
        # The pools PgBouncer keeps for this entry in each process: one per user, plus the auth user's.
        "pools": users + auth_pools,
        "pool_mode": as_choice(entry.get("pool_mode", pool_mode), f"{what}.pool_mode", POOL_MODES),
        "pool_size": None,
        "reserve_pool_size": None,
        "max_db_connections": None,
    }
    for key in ("pool_size", "reserve_pool_size", "max_db_connections"):
        if entry.get(key) is not None:
            checked[key] = as_int(entry[key], f"{what}.{key}", minimum=1 if key == "pool_size" else 0)
    if checked["max_db_connections"] == 0:
        checked["max_db_connections"] = None  # PgBouncer's 0 means no cap
    if entry.get("target") is not None:
        checked["target"] = entry["target"]
    if forced_user is not None:
        checked["user"] = forced_user
    return checked


def _per_process_connections(database, pool_size, reserve_pool_size):
    """Server connections one process may open for one database entry."""
    size = database["pool_size"] if database["pool_size"] is not None else pool_size
    reserve = database["reserve_pool_size"] if database["reserve_pool_size"] is not None else reserve_pool_size
    connections = (size + reserve) * database["pools"]
    if database["max_db_connections"] is not None:
        connections = min(connections, database["max_db_connections"])
    return size, reserve, connections


def _pool_connections(entry):
    """Server connections one pool of a sized entry may open in one process."""
    pool = entry["pool_size"] + entry["reserve_pool_size"]
    return min(pool, entry["max_db_connections"]) if entry["max_db_connections"] else pool


def _entry_users(entry, auth_user):
    """The users, by name, an entry (of the spec) has pools for: a forced user or the names listed, and the auth user."""
    if entry.get("user") is not None:
        names = [entry["user"]]
    else:
        names = list(entry["users"]) if isinstance(entry.get("users"), (list, tuple)) else []
    return names + ([auth_user] if auth_user else [])


def user_shares(sized, databases, auth_user=None):
    """max_user_connections of each named user: the server connections its pools can open in one process.

    ``sized``: the ``databases`` of a pgbouncer_tune result; ``databases``: the entries of its
    spec, in the same order (user names live there; the result keeps counts); ``auth_user``:
    the auth_query lookup user, whose pool each entry has (given only in auth_query mode).
    A user's share is the sum over the entries with a pool for it of min(pool_size +
    reserve_pool_size, max_db_connections): exactly what those pools can open, so the cap
    is a guard that names the share (SHOW USERS on 1.23+), never a tighter limit. Entries
    whose users are a count have no names and add none. Sorted by name.
    """
    if not isinstance(sized, (list, tuple)) or not isinstance(databases, (list, tuple)) or len(sized) != len(databases):
        raise AnsibleFilterError("user_shares: sized and databases must be lists of the same entries")
    shares = {}
    for entry, given in zip(sized, databases):
        for user in _entry_users(given, auth_user):
            shares[user] = shares.get(user, 0) + _pool_connections(entry)
    return dict(sorted(shares.items()))


def _total(databases, pool_size, reserve_pool_size):
    return sum(_per_process_connections(db, pool_size, reserve_pool_size)[2] for db in databases)


def _processes(spec, cpus, notes):
    """Processes given, else one per TPS_PER_PROCESS of expected_tps up to the cores, else one.

    Without ``peers`` (PgBouncer before 1.19 has no [peers]: a cancel request that the kernel
    hands to another process than the query's is lost) the load still gets one process, and a
    note says why; processes given explicitly are the caller's to refuse.
    """
    if spec.get("processes") is not None:
        return as_int(spec["processes"], "processes", minimum=1, maximum=cpus)
    if spec.get("expected_tps") is not None:
        tps = as_int(spec["expected_tps"], "expected_tps", minimum=0)
        wanted = max(1, min(cpus, math.ceil(tps / TPS_PER_PROCESS)))
        if wanted > 1 and spec.get("peers", True) is False:
            notes.append(
                f"one process, although expected_tps {tps} asks for {wanted}: this PgBouncer has no [peers] (1.19+), "
                "so with several processes on one port a cancel request could reach a process that does not run the query"
            )
            return 1
        return wanted
    return 1


def sized_max_client_conn(client_demand):
    """max_client_conn for each process, from the client connections the applications declared.

    The demand plus the server side's spare rule (pg_sizing.default_spare: max(10, 20% of the
    demand)) for clients nobody declared, never below MIN_SIZED_MAX_CLIENT_CONN. Each process
    gets all of it, not a share: the kernel spreads so_reuseport connections by a hash, and
    one client's connections can all reach one process; a client connection costs about
    2kB and one file descriptor (CONNECTION_MEMORY, nofile_limit follows).
    """
    return max(MIN_SIZED_MAX_CLIENT_CONN, client_demand + default_spare(client_demand))


def _max_client_conn(spec):
    """max_client_conn and where it comes from: given, sized from client_demand, or the default."""
    client_demand = None
    if spec.get("client_demand") is not None:
        client_demand = as_int(spec["client_demand"], "client_demand", minimum=0)
    if spec.get("max_client_conn") is not None:
        return as_int(spec["max_client_conn"], "max_client_conn", minimum=1), "given", client_demand
    if client_demand is not None:
        return sized_max_client_conn(client_demand), "sized", client_demand
    return DEFAULT_MAX_CLIENT_CONN, "default", client_demand


def _fit_pool_size(databases, wanted, reserve_pool_size, allowance, processes):
    """The largest default pool size (<= wanted) whose pools fit the per-process allowance.

    Pools given explicitly are user input and are never shrunk: when they alone do not
    fit, or when every default pool at size 1 still does not fit, this raises.
    """
    per_process = allowance // processes
    pools = sum(db["pools"] for db in databases)
    if per_process < pools:
        raise AnsibleFilterError(
            f"server_connection_allowance {allowance} cannot give each of the {pools} (database, user) pools "
            f"of {processes} process(es) one server connection: that needs at least {pools * processes}"
        )
    for size in range(wanted, 0, -1):
        if _total(databases, size, reserve_pool_size) <= per_process:
            return size, per_process
    pinned = [db["name"] for db in databases if db["pool_size"] is not None]
    raise AnsibleFilterError(
        f"server_connection_allowance {allowance} leaves {per_process} server connections per process, "
        f"but the pools need {_total(databases, 1, reserve_pool_size)} even with default_pool_size 1 "
        f"(given pool sizes: {', '.join(pinned) or 'none'}; reserve_pool_size {reserve_pool_size}); "
        "raise the allowance or lower the given pool and reserve sizes"
    )


def pgbouncer_tune(spec):
    """PgBouncer settings for one host, and the server connections it can open.

    Pool size: ``default_pool_size`` if given, else ``4 x server_cpus + 4`` (what the
    server runs best at once, measured by bench/pools.py; see pg_sizing.best_active_connections)
    when server_cpus is given, else PgBouncer's 20. With ``server_connection_allowance`` (the most server connections
    this host may open over all its processes) the default pool shrinks until
    processes x sum over databases of min(max_db_connections, (pool + reserve) x pools)
    fits, where an entry's pools are its users plus, with ``auth_query``, the auth user's;
    pools given per database are never shrunk.
    """
    check_keys(spec, SPEC_REQUIRED, SPEC_OPTIONAL, "pgbouncer_tune spec")
    cpus = as_int(spec["cpus"], "cpus", minimum=1)
    pool_mode = as_choice(spec.get("pool_mode", "transaction"), "pool_mode", POOL_MODES)
    max_client_conn, max_client_conn_source, client_demand = _max_client_conn(spec)
    if not isinstance(spec["databases"], (list, tuple)) or not spec["databases"]:
        raise AnsibleFilterError(f"databases must be a non-empty list of mappings, got {spec['databases']!r}")
    auth_query = spec.get("auth_query", False)
    if not isinstance(auth_query, bool):
        raise AnsibleFilterError(f"auth_query must be true or false, got {auth_query!r}")
    auth_user = spec.get("auth_user")
    if auth_user is not None and (not isinstance(auth_user, str) or not auth_user):
        raise AnsibleFilterError(f"auth_user must be a non-empty string, got {auth_user!r}")
    databases = [_check_database(entry, i, pool_mode, int(auth_query)) for i, entry in enumerate(spec["databases"])]
    names = [db["name"] for db in databases]
    if len(set(names)) != len(names):
        raise AnsibleFilterError(f"databases names must be distinct, got {', '.join(names)}")
    if not isinstance(spec.get("peers", True), bool):
        raise AnsibleFilterError(f"peers must be true or false, got {spec['peers']!r}")
    notes = []
    processes = _processes(spec, cpus, notes)

    if spec.get("default_pool_size") is not None:
        pool_size = as_int(spec["default_pool_size"], "default_pool_size", minimum=1)
    elif spec.get("server_cpus") is not None:
        pool_size = best_active_connections(as_int(spec["server_cpus"], "server_cpus", minimum=1))
    else:
        pool_size = PGBOUNCER_DEFAULT_POOL_SIZE
    reserve_pool_size = as_int(
        spec.get("reserve_pool_size", PGBOUNCER_DEFAULT_RESERVE_POOL_SIZE), "reserve_pool_size", minimum=0
    )
    allowance = None
    max_db_connections = 0
    if spec.get("server_connection_allowance") is not None:
        allowance = as_int(spec["server_connection_allowance"], "server_connection_allowance", minimum=1)
        pool_size, max_db_connections = _fit_pool_size(databases, pool_size, reserve_pool_size, allowance, processes)

    sized = []
    for db in databases:
        size, reserve, per_process = _per_process_connections(db, pool_size, reserve_pool_size)
        cap = db["max_db_connections"]
        entry = {key: db[key] for key in ("name", "target", "user") if key in db} | {
            "users": db["users"],
            "pools": db["pools"],
            "pool_mode": db["pool_mode"],
            "pool_size": size,
            "reserve_pool_size": reserve,
            # With an allowance every entry gets a cap equal to what its pools can open: a guard, never reached.
            "max_db_connections": cap if cap is not None else (per_process if allowance is not None else 0),
            "server_connections": per_process * processes,
        }
        sized.append(entry)
    per_process_total = sum(entry["server_connections"] for entry in sized) // processes

    # PgBouncer's check_limits counts pool_size x every known user for each entry (once for a
    # forced user); counting each entry's own pools plus reserves is the real maximum.
    # The [users] lines (pgbouncer_shares) make every named user known at start, so PgBouncer's
    # own count may be the higher one (several entries, several users each): the limit covers both.
    known_users = len({user for entry in spec["databases"] for user in _entry_users(entry, auth_user if auth_query else None)})
    expected_fds = max(
        max_client_conn
        + 10
        + sum((entry["pool_size"] + entry["reserve_pool_size"]) * entry["pools"] for entry in sized),
        max_client_conn
        + 10
        + sum(entry["pool_size"] * (1 if "user" in entry else known_users) for entry in sized),
    )
    nofile_limit = max(NOFILE_MIN, math.ceil(expected_fds * NOFILE_FACTOR) + NOFILE_EXTRA)
    estimated_memory = processes * (max_client_conn + per_process_total) * CONNECTION_MEMORY
    if spec.get("memory") is not None:
        memory = as_size(spec["memory"], "memory", minimum=1)
        if estimated_memory > memory:
            raise AnsibleFilterError(
                f"{processes} process(es) with max_client_conn {max_client_conn} need about "
                f"{describe_size(estimated_memory)}, more than the memory of {describe_size(memory)}"
            )

    for entry in sized:
        if entry["pool_mode"] == "session":
            capacity = (entry["pool_size"] + entry["reserve_pool_size"]) * processes
            notes.append(
                f"{entry['name']}: session pooling does not multiplex; at most {capacity} clients per user "
                "are connected at once, the others wait for one to disconnect"
            )
    if max_client_conn_source == "sized":
        notes.append(
            f"max_client_conn {max_client_conn} per process: client demand {client_demand} + default spare "
            f"{SPARE_RULE}, at least {MIN_SIZED_MAX_CLIENT_CONN}"
        )
    return {
        "pool_mode": pool_mode,
        "default_pool_size": pool_size,
        "reserve_pool_size": reserve_pool_size,
        "max_db_connections": max_db_connections,
        "max_client_conn": max_client_conn,
        "max_client_conn_source": max_client_conn_source,
        "client_demand": client_demand,
        "client_capacity": max_client_conn * processes,
        "processes": processes,
        "so_reuseport": processes > 1,
        "nofile_limit": nofile_limit,
        "server_connections": per_process_total * processes,
        "server_connections_per_process": per_process_total,
        "estimated_memory": estimated_memory,
        "databases": sized,
        "notes": notes,
    }


def pgbouncer_spec(variables, cpus, memory=None, peers=None, client_demand=None):
    """The pgbouncer_tune spec of one PgBouncer host, from the role's variables without their prefix.

    One builder for the pgbouncer role (tasks/plan.yml, on the host) and the fleet plan (on the
    controller, from the inventory), so both size the same pools. ``variables`` holds databases,
    pool_mode, reserve_pool_size, auth_mode, auth_user, max_client_conn and CHOSEN_AT_ZERO (others
    are ignored); a missing, null or 0 value of these is left to the engine. ``peers`` is whether
    the installed PgBouncer has [peers] (null: unknown, as in the plan); ``client_demand`` the
    declared clients max_client_conn is sized from when the inventory does not give it.
    """
    if not isinstance(variables, Mapping):
        raise AnsibleFilterError(f"pgbouncer_spec: variables must be a mapping of the role's inputs, got {variables!r}")
    databases = variables.get("databases")
    if isinstance(databases, (list, tuple)):
        databases = [
            {"users": 1} | {key: entry[key] for key in SIZED_DATABASE_KEYS if key in entry}
            if isinstance(entry, Mapping) else entry
            for entry in databases
        ]
    spec = {
        "cpus": cpus,
        "memory": memory,
        "databases": databases,
        "max_client_conn": variables.get("max_client_conn"),
        "client_demand": client_demand,
        "pool_mode": variables.get("pool_mode"),
        "reserve_pool_size": variables.get("reserve_pool_size"),
        # auth_query: each entry's auth user pool (it runs the lookups) counts like a user's.
        "auth_query": variables.get("auth_mode") == "auth_query",
        "auth_user": variables.get("auth_user"),
        "peers": peers,
    }
    for key in CHOSEN_AT_ZERO:
        if variables.get(key) not in (None, 0, "0"):
            spec[key] = variables[key]
    return {key: value for key, value in spec.items() if value is not None}


class FilterModule:
    """PgBouncer sizing filters."""

    def filters(self):
        return {"pgbouncer_tune": pgbouncer_tune, "pgbouncer_spec": pgbouncer_spec}
