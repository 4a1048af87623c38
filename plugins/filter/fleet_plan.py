"""The fleet_plan filter: the whole fleet's connection budget and settings, from the inventory, in one call.

It reads, per host, only the variables of the inventory model (see fleet_plan.yml), so a
plan of thousands of hosts is one pass in Python instead of thousands of tasks. It adds
nothing to the sizing rules: servers are sized by pg_tune and pg_max_connections,
PgBouncer hosts by pgbouncer_tune, demand is pg_connection_budget's. What it adds:

* where each PgBouncer database entry really goes (inventory hostname, its ansible_host,
  this host's own socket, or a server outside the inventory declared in
  headroom_external_servers), so pools are counted against the right server;
* servers outside the inventory (managed PostgreSQL such as RDS or Cloud SQL, another
  team's server): their declared max_connections is a fixed ceiling, which the pools and
  direct clients that reach them must fit under with its reserved slots;
* which resources each host has, and where that came from (measured, inventory, facts);
* the client side: per PgBouncer host, the applications declared in headroom_pgbouncer_clients
  (pool x instances, counted as direct clients are) against max_client_conn x processes,
  so "too many clients" does not just move to PgBouncer's "no more connections allowed
  (max_client_conn)"; an unset pgbouncer_max_client_conn is sized from that demand;
* pgpool-II nodes (group pgpool): each node's num_init_children x max_pool and its checks
  (pgpool_demand) are counted on every backend it fronts, and each node is told what the
  other clients of each backend hold, so the pgpool role's own check against the running
  max_connections is the fleet's;
* standby parity: PostgreSQL refuses to run a hot standby whose max_connections,
  max_worker_processes, max_wal_senders, max_prepared_transactions or
  max_locks_per_transaction is below its primary's (facts.md), so a standby gets at
  least its primary's values.
"""

import json
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.connection_budget import client_connections, pg_connection_budget
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_sizing import (
    CHOSEN_AT_ZERO,
    pgbouncer_spec,
    pgbouncer_tune,
    sized_max_client_conn,
    user_shares,
)
from ansible_collections.headroom.pg.plugins.filter.pgpool_sizing import pgpool_demand
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_inputs import as_int, as_size, check_keys
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_sizing import (
    DEFAULT_SUPERUSER_RESERVED,
    SPARE_RULE,
    default_spare,
    tune_with_report,
)
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_tuning import PREFIX, tuning_spec
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_units import MB

#: Settings a hot standby must run at least at its primary's value, with PostgreSQL's
#: defaults (13 to 18) for when neither pg_tune nor the overrides set them.
PARITY_DEFAULTS = {
    "max_connections": 100,
    "max_worker_processes": 8,
    "max_wal_senders": 10,
    "max_prepared_transactions": 0,
    "max_locks_per_transaction": 64,
}

#: PostgreSQL of each Debian release, for servers that have none installed yet.
DEBIAN_POSTGRESQL = {"11": 11, "12": 15, "13": 17, "10": 9}

#: How many contributors a failure message names.
TOP_CONTRIBUTORS = 3

#: The pgbouncer role's variables its sizing reads (pgbouncer_spec, the builder both share).
PGBOUNCER_SPEC_VARIABLES = (
    "pgbouncer_databases",
    "pgbouncer_pool_mode",
    "pgbouncer_reserve_pool_size",
    "pgbouncer_auth_mode",
    "pgbouncer_auth_user",
    *(f"pgbouncer_{key}" for key in CHOSEN_AT_ZERO),
)
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
CLIENT_KEYS = ("name", "target", "connections", "active", "instances", "hosts", "group", "reserved", "role")
#: An application behind PgBouncer, declared on the PgBouncer host it connects through.
#: ``user`` and ``database`` (a pgbouncer_databases name) say where PgBouncer enforces its share.
PGBOUNCER_CLIENT_KEYS = ("name", "connections", "instances", "hosts", "group", "user", "database")

#: A server outside the inventory (headroom_external_servers): where it is, its max_connections
#: and reserved slots as its operator set them, and its CPUs for PgBouncer's pool rule.
EXTERNAL_REQUIRED = ("address", "max_connections")
EXTERNAL_OPTIONAL = ("port", "superuser_reserved_connections", "reserved_connections", "cpus")

#: The first PostgreSQL with reserved_connections and the role pg_use_reserved_connections.
RESERVED_CONNECTIONS_FROM = 16

#: The inventory model's variables the plan reads on a database server and on a PgBouncer
#: host, and the cached facts it reads on both.
SERVER_VARIABLES = (
    "connection_budget_resources",
    "headroom_memory",
    "headroom_cpus",
    "headroom_postgresql_version",
    "postgresql_version",
    "postgresql_primary",
    "ansible_host",
    "postgresql_tuning_clusters",
    "postgresql_tuning_memory_fraction",
    "postgresql_tuning_profile",
    "postgresql_tuning_storage",
    "postgresql_tuning_reserved_memory",
    "postgresql_tuning_overrides",
    "postgresql_tuning_max_connections",
    "postgresql_tuning_spare_connections",
    "postgresql_tuning_connection_memory",
)
POOLER_VARIABLES = (
    "connection_budget_resources",
    "headroom_memory",
    "headroom_cpus",
    "pgbouncer_databases",
    "headroom_pgbouncer_clients",
    # Read from the inventory only: the role's default means "size it from the clients".
    "pgbouncer_max_client_conn",
    "pgbouncer_nofile_limit",
    *PGBOUNCER_SPEC_VARIABLES,
)
#: The pgpool role's variables its sizing reads on a pgpool-II node (group pgpool).
PGPOOL_VARIABLES = (
    "pgpool_backends",
    "pgpool_users",
    "pgpool_num_init_children",
    "pgpool_max_pool",
    "pgpool_cancel_headroom",
)
MODEL_VARIABLES = frozenset(SERVER_VARIABLES + POOLER_VARIABLES + PGPOOL_VARIABLES)
FACT_KEYS = ("memtotal_mb", "processor_nproc", "processor_vcpus", "distribution", "distribution_major_version")


def _plain(value):
    """Inventory data as plain dicts and lists, so nothing later goes back to Ansible's lazy templating."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _model_variables(variables, names):
    """One host's variables of the inventory model, each templated once, as plain data.

    Ansible builds all of a host's variables (every group_vars file, facts, magic
    variables) for each hostvars lookup and templates each value on access: on ten
    thousand hosts that is most of the plan's time, so it is done once per host, for
    the few variables the plan reads. Unset and null variables are left out.
    """
    model = {}
    for name in names:
        value = variables[name] if name in variables else None
        if value is not None:
            model[name] = _plain(value)
    facts = variables["ansible_facts"] if "ansible_facts" in variables else None
    if isinstance(facts, Mapping):
        model["ansible_facts"] = {key: _plain(facts[key]) for key in FACT_KEYS if key in facts}
    return model


def _var(hostvars, host, name, defaults):
    """A host's variable, else the role default; None when neither has it."""
    variables = hostvars[host]
    if name in variables and variables[name] is not None:
        return variables[name]
    return defaults.get(name)


def _facts(hostvars, host):
    facts = hostvars[host].get("ansible_facts")
    return facts if isinstance(facts, Mapping) else {}


def _fact_cpus(facts):
    return facts.get("processor_nproc") or facts.get("processor_vcpus")


def _fact_memory(facts):
    return facts["memtotal_mb"] * MB if facts.get("memtotal_mb") else None


def _server_resources(hostvars, host, defaults):
    """Memory, CPUs and version of a database server, and where each came from.

    connection_budget_resources (measured by site.yml's first play, cgroup limits included, kept in
    the fact cache) wins; then the inventory's headroom_memory / headroom_cpus /
    headroom_postgresql_version; then cached Ansible facts (no cgroup limits).
    """
    measured = _var(hostvars, host, "connection_budget_resources", {}) or {}
    facts = _facts(hostvars, host)
    memory_choices = (
        ("measured", measured.get("memory")),
        ("inventory", _var(hostvars, host, "headroom_memory", {})),
        ("facts", _fact_memory(facts)),
    )
    cpu_choices = (
        ("measured", measured.get("cpus")),
        ("inventory", _var(hostvars, host, "headroom_cpus", {})),
        ("facts", _fact_cpus(facts)),
    )
    release = str(facts.get("distribution_major_version", "")) if facts.get("distribution") == "Debian" else ""
    installed = _var(hostvars, host, "postgresql_version", defaults)
    version_choices = (
        ("measured", measured.get("version")),
        ("inventory", _var(hostvars, host, "headroom_postgresql_version", {})),
        ("postgresql_version", installed if installed not in (None, "") else None),
        ("distribution", DEBIAN_POSTGRESQL.get(release)),
    )
    resources = {}
    for key, choices, hint in (
        ("memory", memory_choices, "headroom_memory (such as '16GB')"),
        ("cpus", cpu_choices, "headroom_cpus"),
        ("version", version_choices, "headroom_postgresql_version (13 to 18)"),
    ):
        source, value = next(((source, value) for source, value in choices if value not in (None, "")), (None, None))
        if source is None:
            raise AnsibleFilterError(
                f"server {host}: its {key} is unknown: no measurement (site.yml's first play, kept in the fact "
                f"cache), no inventory variable {hint} and no cached facts; set {hint.split(' ', maxsplit=1)[0]} for {host} "
                "or run site.yml once with fact caching on"
            )
        resources[key] = value
        resources[f"{key}_source"] = source
    resources["memory"] = as_size(resources["memory"], f"{host}: memory ({resources['memory_source']})", minimum=1)
    resources["cpus"] = as_int(resources["cpus"], f"{host}: cpus ({resources['cpus_source']})", minimum=1)
    resources["version"] = as_int(resources["version"], f"{host}: version ({resources['version_source']})")
    resources["clusters"] = as_int(measured.get("clusters", 1), f"{host}: connection_budget_resources.clusters", minimum=1)
    return resources


def _server_spec(hostvars, host, resources, defaults):
    """The pg_tune spec postgresql_tuning builds on the host, minus the demand (one builder for both)."""
    wanted = _var(hostvars, host, "postgresql_tuning_clusters", defaults) or []
    return tuning_spec(
        resources, resources["version"], lambda name: _var(hostvars, host, PREFIX + name, defaults),
        len(wanted) if wanted else resources["clusters"], demand=False,
    )


def _addresses(hostvars, servers, external):
    """Each server's address (an inventory server's ansible_host, an external one's address) -> its name."""
    addresses = {}
    for host in servers:
        if hostvars[host].get("ansible_host"):
            addresses.setdefault(hostvars[host]["ansible_host"], host)
    for name, server in external.items():
        addresses.setdefault(server["address"], name)
    return addresses


def _resolve_target(entry, pooler, servers, addresses, what):
    """The server an entry of pgbouncer_databases points at, as an inventory hostname."""
    host = entry.get("host", pooler)
    if host in servers:
        return host
    if isinstance(host, str) and (host.startswith("/") or host in LOCAL_HOSTS):
        if pooler in servers:
            return pooler
        raise AnsibleFilterError(
            f"{what} reaches a server on {pooler} itself ({host!r}), but {pooler} is not in group postgresql; "
            "add it there so its pools are counted against it"
        )
    if host in addresses:
        return addresses[host]
    raise AnsibleFilterError(
        f"{what} has host {host!r}, which is neither a server the plan knows ({', '.join(sorted(servers)) or 'none'}) "
        "nor the address of one; the budget cannot count its pools against a server it does not know. "
        "Add the server to group postgresql, or declare it in headroom_external_servers with its max_connections"
    )


def _pooler(hostvars, pooler, servers, addresses, server_cpus_of, defaults, groups):
    """pgbouncer_tune for one PgBouncer host, as roles/pgbouncer/tasks/plan.yml calls it, with targets and clients."""
    databases = _var(hostvars, pooler, "pgbouncer_databases", defaults) or []
    if not isinstance(databases, list) or not databases:
        raise AnsibleFilterError(
            f"pgbouncer host {pooler}: pgbouncer_databases must be a non-empty list of databases, got {databases!r}"
        )
    targets = []
    entries = []
    for index, entry in enumerate(databases):
        what = f"pgbouncer host {pooler}: pgbouncer_databases[{index}]"
        if not isinstance(entry, Mapping) or not entry.get("name"):
            raise AnsibleFilterError(f"{what} must be a mapping with a name, got {entry!r}")
        targets.append(_resolve_target(entry, pooler, servers, addresses, f"{what} ({entry['name']})"))
        entries.append(entry)
    facts = _facts(hostvars, pooler)
    measured = _var(hostvars, pooler, "connection_budget_resources", {}) or {}
    cpus = _fact_cpus(facts) or _var(hostvars, pooler, "headroom_cpus", {}) or measured.get("cpus")
    memory = _fact_memory(facts) or _var(hostvars, pooler, "headroom_memory", {}) or measured.get("memory")
    if cpus is None:
        raise AnsibleFilterError(
            f"pgbouncer host {pooler}: its CPUs are unknown (no cached facts); set headroom_cpus for it or run "
            "site.yml once with fact caching on"
        )
    applications = _pgbouncer_clients(
        hostvars, pooler, groups, [entry["name"] for entry in entries],
        sorted({str(user) for entry in entries if isinstance(entry.get("users"), list) for user in entry["users"]}),
    )
    # The role's own builder (roles/pgbouncer/tasks/plan.yml): the inventory's variables, else the
    # role's defaults; max_client_conn from the inventory only, else pgbouncer_tune sizes it from
    # the declared clients (or takes its default of 1000), and site.yml passes the result on.
    variables = {name.removeprefix("pgbouncer_"): _var(hostvars, pooler, name, defaults) for name in PGBOUNCER_SPEC_VARIABLES}
    variables["max_client_conn"] = hostvars[pooler].get("pgbouncer_max_client_conn")
    spec = pgbouncer_spec(
        variables, cpus, memory, client_demand=sum(app["client_connections"] for app in applications) if applications else None
    )
    # The pool rule of thumb needs the server's cores: the smallest server behind this host.
    unknown_cpus = sorted({target for target in targets if server_cpus_of[target] is None})
    if not spec.get("server_cpus") and unknown_cpus:
        raise AnsibleFilterError(
            f"pgbouncer host {pooler}: the pool rule of thumb needs the CPUs of {', '.join(unknown_cpus)}, a server outside "
            f"the inventory: set cpus in headroom_external_servers.{unknown_cpus[0]}, or pgbouncer_server_cpus for {pooler}"
        )
    server_cpus = spec.get("server_cpus") or min(server_cpus_of[target] for target in targets)
    spec["server_cpus"] = server_cpus
    try:
        sized = pgbouncer_tune(spec)
    except AnsibleFilterError as err:
        raise AnsibleFilterError(f"pgbouncer host {pooler} (pgbouncer_* variables)") from err
    for database, target in zip(sized["databases"], targets, strict=True):
        database["target"] = target
    nofile_limit = as_int(
        _var(hostvars, pooler, "pgbouncer_nofile_limit", defaults) or 0, f"pgbouncer host {pooler}: pgbouncer_nofile_limit",
        minimum=0,
    )
    verdict, problem, warnings = _client_verdict(pooler, sized, applications, nofile_limit)
    # What each named user's pools can open on each server: a direct client's role that is also
    # a PgBouncer user needs both under its CONNECTION LIMIT.
    user_connections = [
        {"target": database["target"], "user": user, "connections": share * sized["processes"]}
        for entry, database in zip(entries, sized["databases"], strict=True)
        for user, share in user_shares([database], [entry]).items()
    ]
    return {
        "sizing": sized,
        "server_cpus": as_int(server_cpus, f"pgbouncer host {pooler}: pgbouncer_server_cpus", minimum=1),
        "server_connection_allowance": sized["server_connections"],
        "targets": sorted(set(targets)),
        "clients": {
            "demand": sized["client_demand"],
            "applications": applications,
            "max_client_conn": sized["max_client_conn"],
            "max_client_conn_source": sized["max_client_conn_source"],
            "processes": sized["processes"],
            "capacity": sized["client_capacity"],
            "verdict": verdict,
            # Each process enforces them on its own (PgBouncer 1.24+: max_user_client_connections,
            # max_db_client_connections): the share is the declared total, per process.
            "user_limits": _client_limits(applications, "user"),
            "database_limits": _client_limits(applications, "database"),
        },
        "user_connections": user_connections,
        "problem": problem,
        "warnings": warnings,
    }


def _pgpool_backends(hostvars, node, servers, addresses, defaults):
    """A pgpool-II node's pgpool_backends, checked, in pgpool.conf's order, each with the server it reaches."""
    entries = _var(hostvars, node, "pgpool_backends", defaults) or []
    if not isinstance(entries, list) or not entries:
        raise AnsibleFilterError(
            f"pgpool host {node}: pgpool_backends must be a non-empty list of backend servers, got {entries!r}"
        )
    backends = []
    for index, entry in enumerate(entries):
        what = f"pgpool host {node}: pgpool_backends[{index}]"
        if not isinstance(entry, Mapping) or not entry.get("host"):
            raise AnsibleFilterError(f"{what} must be a mapping with a host, got {entry!r}")
        backends.append(
            {
                "host": entry["host"],
                "target": _resolve_target(entry, node, servers, addresses, what),
                "entry": entry,
                "given_other_demand": as_int(entry.get("other_demand", 0), f"{what}.other_demand", minimum=0),
            }
        )
    return backends


def _pgpool_node(hostvars, node, servers, addresses, server_cpus_of, defaults):
    """pgpool_demand for one pgpool-II node, with the server each of its pgpool_backends reaches."""
    backends = _pgpool_backends(hostvars, node, servers, addresses, defaults)
    targets = list(dict.fromkeys(backend["target"] for backend in backends))
    users = _var(hostvars, node, "pgpool_users", defaults) or []
    given = {
        key: as_int(_var(hostvars, node, f"pgpool_{key}", defaults) or 0, f"pgpool host {node}: pgpool_{key}", minimum=0)
        for key in ("num_init_children", "max_pool")
    }
    spec = {
        "pairs": max(len(users) if isinstance(users, list) else 1, 1),
        "cancel_headroom": bool(_var(hostvars, node, "pgpool_cancel_headroom", defaults)),
        **{key: value for key, value in given.items() if value},
    }
    if "num_init_children" not in spec:
        unknown = [target for target in targets if server_cpus_of[target] is None]
        if unknown:
            raise AnsibleFilterError(
                f"pgpool host {node}: sizing num_init_children by the pool rule of thumb needs the CPUs of "
                f"{', '.join(unknown)}, a server outside the inventory: set cpus in headroom_external_servers."
                f"{unknown[0]}, or pgpool_num_init_children for {node}"
            )
        spec["server_cpus"] = min(server_cpus_of[target] for target in targets)
    try:
        sizing = pgpool_demand(spec)
    except AnsibleFilterError as err:
        raise AnsibleFilterError(f"pgpool host {node} (pgpool_* variables): {err.message}") from err
    # Every child may hold a connection of each user to each backend: a direct client's role that
    # also logs in through pgpool-II needs room for all of them under its CONNECTION LIMIT.
    names = [user["name"] for user in (users if isinstance(users, list) else []) if isinstance(user, Mapping)
             and user.get("name")]
    user_connections = [
        {"target": target, "user": name, "connections": sizing["num_init_children"] * sizing["max_pool"]}
        for target in targets
        for name in names
    ]
    return {"sizing": sizing, "backends": backends, "targets": targets, "user_connections": user_connections}


def _application_words(applications):
    return "; ".join(
        f"{app['name']} {app['connections']} x {app['instances']} = {app['client_connections']}" for app in applications
    )


def _client_verdict(pooler, sized, applications, nofile_limit):
    """The verdict (undeclared, ok or over), problem (or None) and warnings of a PgBouncer host's client side.

    The declared client connections must fit max_client_conn x processes: beyond it PgBouncer
    refuses logins ("no more connections allowed (max_client_conn)"). Above one process's
    max_client_conn they fit only if the kernel spreads them evenly (so_reuseport hashes
    connections), which is a warning. A pinned pgbouncer_nofile_limit below what
    max_client_conn needs is a problem here, before the role refuses it on the host.
    """
    demand, limit, processes = sized["client_demand"], sized["max_client_conn"], sized["processes"]
    capacity = sized["client_capacity"]
    plural = "process" if processes == 1 else "processes"
    verdict = "ok" if applications else "undeclared"
    if applications and demand > capacity:
        return "over", (
            f"pgbouncer host {pooler}: its declared clients open {demand} client connections, but it accepts at most "
            f"{capacity} (pgbouncer_max_client_conn {limit} x {processes} {plural}); PgBouncer would refuse the rest "
            f"with \"no more connections allowed (max_client_conn)\". Applications (connections x instances): "
            f"{_application_words(applications)}. Fix: raise pgbouncer_max_client_conn for {pooler} (at least "
            f"{-(-demand // processes)} per process; {sized_max_client_conn(demand)}, the demand plus spare, is what the "
            "plan sizes when it is unset), or lower connections or instances in headroom_pgbouncer_clients"
        ), []
    if 0 < nofile_limit < sized["nofile_limit"]:
        return verdict, (
            f"pgbouncer host {pooler}: pgbouncer_nofile_limit {nofile_limit} is below the {sized['nofile_limit']} file "
            f"descriptors that max_client_conn {limit} and the pools need (clients beyond it would hang); raise it, or "
            "set 0 to take the sizing engine's"
        ), []
    if applications and processes > 1 and demand > limit:
        return verdict, None, [
            f"pgbouncer host {pooler}: its declared clients open {demand} client connections, more than one process's "
            f"max_client_conn {limit}; they fit the {processes} processes only if the kernel spreads them evenly "
            "(so_reuseport hashes connections; a Unix socket reaches one process). Raise pgbouncer_max_client_conn to "
            f"{sized_max_client_conn(demand)} or leave it unset"
        ]
    return verdict, None, []


def _declared_clients(declared, variable, keys, required, groups):
    """A list of declared clients, checked, each as a dict with only ``keys``: a group becomes its hosts.

    The shape every client declaration shares (headroom_direct_clients and
    headroom_pgbouncer_clients): name, connections per instance, and at most one of
    instances, hosts or group.
    """
    if declared is None:
        return []
    if not isinstance(declared, list):
        raise AnsibleFilterError(f"{variable} must be a list of clients, got {declared!r}")
    clients = []
    for index, client in enumerate(declared):
        what = f"{variable}[{index}]"
        if not isinstance(client, Mapping):
            raise AnsibleFilterError(f"{what} must be a mapping, got {client!r}")
        unknown = sorted(str(key) for key in client if key not in keys)
        if unknown:
            raise AnsibleFilterError(f"{what} has unknown key(s) {', '.join(unknown)}; allowed are {', '.join(keys)}")
        missing = [key for key in required if client.get(key) in (None, "")]
        if missing:
            raise AnsibleFilterError(f"{what} needs {', '.join(missing)}, got {dict(client)!r}")
        if len([key for key in ("instances", "hosts", "group") if key in client]) > 1:
            raise AnsibleFilterError(f"{what} ({client['name']}) gives more than one of instances, hosts and group")
        entry = {key: client[key] for key in keys if key in client and key != "group"}
        if "group" in client:
            members = groups.get(client["group"])
            if not members:
                raise AnsibleFilterError(
                    f"{what} ({client['name']}) names group {client['group']!r}, which the inventory does not have "
                    "or which has no hosts"
                )
            entry["hosts"] = list(members)
        clients.append((what, entry))
    return clients


def _direct_clients(direct_clients, groups, servers, external):
    """headroom_direct_clients in pg_connection_budget's shape: a group becomes its hosts."""
    clients = []
    declared = _declared_clients(
        direct_clients, "headroom_direct_clients", CLIENT_KEYS, ("name", "target", "connections"), groups
    )
    for what, client in declared:
        if client["target"] not in servers and client["target"] not in external:
            raise AnsibleFilterError(
                f"{what} ({client['name']}) targets {client['target']!r}, which is neither a host of group postgresql "
                f"({', '.join(sorted(servers)) or 'none'}) nor a server of headroom_external_servers "
                f"({', '.join(sorted(external)) or 'none'})"
            )
        # headroom changes nothing on a server outside the inventory: no CONNECTION LIMIT, no grant.
        given = [key for key in ("role", "reserved") if client["target"] in external and client.get(key)]
        if given:
            raise AnsibleFilterError(
                f"{what} ({client['name']}) targets {client['target']!r}, a server outside the inventory, where headroom "
                f"changes nothing, so it cannot have {' or '.join(given)} (a CONNECTION LIMIT or pg_use_reserved_connections "
                "there is set by its operator); leave it out"
            )
        if not isinstance(client.get("reserved", False), bool):
            raise AnsibleFilterError(f"{what} ({client['name']}): reserved must be true or false, got {client['reserved']!r}")
        if "role" in client and (not isinstance(client["role"], str) or not client["role"]):
            raise AnsibleFilterError(f"{what} ({client['name']}): role must be a role name, got {client['role']!r}")
        clients.append(client)
    return clients


def _pgbouncer_clients(hostvars, pooler, groups, database_names, user_names=None):
    """The applications declared on a PgBouncer host (headroom_pgbouncer_clients), each with its pool x instances."""
    variable = f"pgbouncer host {pooler}: headroom_pgbouncer_clients"
    declared = _declared_clients(
        hostvars[pooler].get("headroom_pgbouncer_clients"), variable, PGBOUNCER_CLIENT_KEYS, ("name", "connections"),
        groups,
    )
    applications = []
    for what, client in declared:
        connections, instances = client_connections(client, what)
        user, database = client.get("user"), client.get("database")
        if user is not None and (not isinstance(user, str) or not user):
            raise AnsibleFilterError(f"{what} ({client['name']}): user must be a PgBouncer user name, got {user!r}")
        # The pgbouncer role gives a client share only to users its entries name (not counted).
        if user is not None and user_names is not None and user not in user_names:
            raise AnsibleFilterError(
                f"{what} ({client['name']}): user {user!r} is not named in this host's pgbouncer_databases users "
                f"({', '.join(user_names) or 'none: its entries give counts'}); name it there, or leave user out"
            )
        if database is not None and database not in database_names:
            raise AnsibleFilterError(
                f"{what} ({client['name']}): database {database!r} is not one of this host's pgbouncer_databases "
                f"({', '.join(database_names)})"
            )
        applications.append(
            {
                "name": str(client["name"]),
                "connections": connections,
                "instances": instances,
                "client_connections": connections * instances,
                "user": user,
                "database": database,
            }
        )
    return sorted(applications, key=lambda app: (-app["client_connections"], app["name"]))


def _client_limits(applications, key):
    """The declared client connections per user (or per database) of a PgBouncer host's applications."""
    limits = {}
    for app in applications:
        if app[key] is not None and app["client_connections"] > 0:
            limits[app[key]] = limits.get(app[key], 0) + app["client_connections"]
    return dict(sorted(limits.items()))


def _role_limits(clients, pool_plans, primary_of):
    """Per server, the CONNECTION LIMIT of each role that direct clients name.

    A role's limit on a server is its direct clients' connections x instances there plus what
    PgBouncer pools of the same user can open there. Roles are one catalog for a primary and its
    standbys (ALTER ROLE runs on the primary), so a role named anywhere in a replication tree is
    counted on each of its servers, the primary carries the largest of those limits, and standbys
    get none of their own. ``pool_plans`` are the PgBouncer hosts' and pgpool-II nodes' plans, each
    with the connections its pools can open per user and server (``user_connections``).
    """
    def root(host):
        while primary_of[host] is not None:
            host = primary_of[host]
        return host

    named = {host: set() for host in primary_of}
    for client in clients:
        if client.get("role"):
            named[root(client["target"])].add(client["role"])
    limits = {host: dict.fromkeys(named[root(host)], 0) for host in primary_of}
    for client in clients:
        if client.get("role"):
            per_instance, instances = client_connections(client, str(client["name"]))
            limits[client["target"]][client["role"]] += per_instance * instances
    for plan in pool_plans:
        for row in plan["user_connections"]:
            if row["user"] in limits.get(row["target"], {}):
                limits[row["target"]][row["user"]] += row["connections"]
    tree = {host: {} for host in primary_of}
    for host, roles in limits.items():
        for role, limit in roles.items():
            tree[root(host)][role] = max(tree[root(host)].get(role, 0), limit)
    return {host: {role: n for role, n in sorted(tree[host].items()) if n > 0} for host in primary_of}


def _reserved_clients(clients, resources, specs):
    """Operations clients (``reserved: true``) on PostgreSQL 16+ go to reserved_connections, not the demand.

    Their roles get pg_use_reserved_connections (postgresql_tuning), so they still log in when
    applications have used every ordinary slot. Before 16 they count as ordinary demand.
    Returns the clients for the budget and, per server, the roles to grant.
    """
    roles = {host: [] for host in specs}
    ordinary = []
    for client in clients:
        reserved, role = client.pop("reserved", False), client.pop("role", None)
        target = client["target"]
        if not reserved or resources[target]["version"] < RESERVED_CONNECTIONS_FROM:
            ordinary.append(client)
            continue
        per_instance, instances = client_connections(client, str(client["name"]))
        connections = per_instance * instances
        specs[target]["reserved_connections"] = specs[target].get("reserved_connections", 0) + connections
        if role and role not in roles[target]:
            roles[target].append(role)
    return ordinary, roles


def _external_servers(declared, hosts):
    """headroom_external_servers, checked: name -> address, port, max_connections, reserved slots and CPUs.

    Servers outside the inventory are counted in the budget like any server, against the
    max_connections their operator set (an RDS parameter group, Cloud SQL's flag), which
    headroom cannot change: the fleet's pools and direct clients must fit under it.
    """
    if declared in (None, {}):
        return {}
    if not isinstance(declared, Mapping):
        raise AnsibleFilterError(
            f"headroom_external_servers must be a mapping of server name to its declaration, got {declared!r}"
        )
    external = {}
    for name, entry in declared.items():
        what = f"headroom_external_servers.{name}"
        if not isinstance(name, str) or not name or name in hosts:
            raise AnsibleFilterError(
                f"{what}: a server outside the inventory needs a name that is no inventory host, got {name!r}"
            )
        check_keys(entry, EXTERNAL_REQUIRED, EXTERNAL_OPTIONAL, what)
        address = entry["address"]
        if not isinstance(address, str) or not address or address.startswith("/") or address in LOCAL_HOSTS:
            raise AnsibleFilterError(
                f"{what}.address must be the DNS name or IP address the PgBouncer hosts reach it at, got {address!r}"
            )
        superuser = as_int(
            entry.get("superuser_reserved_connections", DEFAULT_SUPERUSER_RESERVED),
            f"{what}.superuser_reserved_connections", minimum=0,
        )
        reserved = as_int(entry.get("reserved_connections", 0), f"{what}.reserved_connections", minimum=0)
        external[name] = {
            "address": address,
            "port": as_int(entry.get("port", 5432), f"{what}.port", minimum=1, maximum=65535),
            "max_connections": as_int(
                entry["max_connections"], f"{what}.max_connections", minimum=superuser + reserved + 1
            ),
            "superuser_reserved_connections": superuser,
            "reserved_connections": reserved,
            "cpus": None if entry.get("cpus") is None else as_int(entry["cpus"], f"{what}.cpus", minimum=1),
        }
    return external


def _external_plan(name, server, budget):
    """A server outside the inventory: its budget against its declared max_connections, with problem and warnings."""
    entry = server | budget | {"problem": None, "warnings": []}
    top = _top_contributors(budget)
    if budget["verdict"] == "over":
        entry["problem"] = (
            f"{name} (outside the inventory) is over its connection ceiling: the fleet may open {budget['demand']} "
            f"connections (+ {budget['required_max_connections'] - budget['demand']} reserved = "
            f"{budget['required_max_connections']}) but its declared max_connections is {server['max_connections']}. "
            f"Top contributors: {top}. Fix: smaller pools (pool_size or pgbouncer_default_pool_size on the PgBouncer "
            "hosts, fewer processes), transaction pooling, or a larger max_connections on the server (its operator's "
            "setting) and in headroom_external_servers"
        )
    elif budget["demand"] and budget["headroom"] < default_spare(budget["demand"]):
        entry["warnings"].append(
            f"{name}: max_connections {server['max_connections']} leaves {budget['headroom']} spare slots above the "
            f"demand {budget['demand']} + {budget['required_max_connections'] - budget['demand']} reserved; headroom "
            f"keeps {default_spare(budget['demand'])} ({SPARE_RULE}) on the servers it sizes, for clients nobody declared"
        )
    return entry


def _primaries(hostvars, servers):
    """Each server's primary (None for a primary), checked: a known server, no cycle."""
    primary_of = {}
    for host in servers:
        primary = hostvars[host].get("postgresql_primary")
        if primary in (None, ""):
            primary_of[host] = None
            continue
        if primary not in servers or primary == host:
            raise AnsibleFilterError(
                f"server {host}: postgresql_primary {primary!r} must be another host of group postgresql "
                f"({', '.join(sorted(s for s in servers if s != host)) or 'none'})"
            )
        primary_of[host] = primary
    for host in servers:
        seen, current = [host], primary_of[host]
        while current is not None:
            if current in seen:
                raise AnsibleFilterError(f"postgresql_primary forms a cycle: {' -> '.join([*seen, current])}")
            seen.append(current)
            current = primary_of[current]
    return primary_of


def _order(primary_of):
    """Servers with every primary before its standbys."""
    depth = {}

    def level(host):
        if host not in depth:
            depth[host] = 0 if primary_of[host] is None else level(primary_of[host]) + 1
        return depth[host]

    return sorted(primary_of, key=lambda host: (level(host), host))


def _parity_value(settings, name):
    return int(settings.get(name, PARITY_DEFAULTS[name]))


def _top_contributors(budget):
    """The largest contributors of a server's demand, for a failure message."""
    return "; ".join(
        f"{item['name']} {item['connections']}" for item in budget["contributors"][:TOP_CONTRIBUTORS]
    ) or "none"


def _over_message(host, server, budget, resources, engine_error):
    top = _top_contributors(budget)
    return (
        f"{host} is over its connection ceiling: the fleet may open {budget['demand']} connections "
        f"(+ {budget['required_max_connections'] - budget['demand']} reserved = {budget['required_max_connections']}) "
        f"but its {resources['memory'] // MB}MB of memory ({resources['memory_source']}) allow at most "
        f"{budget['ceiling']}. Top contributors: {top}. Fix: smaller pools (pool_size or "
        "pgbouncer_default_pool_size on the PgBouncer hosts, fewer processes), transaction pooling "
        "(pgbouncer_pool_mode: transaction) or PgBouncer in front of direct clients, or more memory. "
        f"Engine: {engine_error}"
    )


def fleet_plan(hostvars, groups, direct_clients=None, defaults=None, external_servers=None):
    """Per server: resources, demand and its contributors, ceiling, headroom, settings; per PgBouncer host its sizing.

    ``external_servers`` (headroom_external_servers) are servers outside the inventory; each is
    planned in ``external_servers`` of the result against its declared max_connections.

    Nothing raises for a server over its ceiling: it gets verdict 'over' and a problem
    sentence, and ``problems`` lists them, so a caller can report before it fails.
    Bad input (unknown targets, missing resources, a primary that is no server) raises.
    """
    # Plain data from here on: the JSON report then walks no lazy Ansible containers.
    defaults = {name: _plain(value) for name, value in (defaults or {}).items() if name in MODEL_VARIABLES}
    direct_clients = _plain(direct_clients)
    servers = list(groups.get("postgresql") or [])
    poolers = list(groups.get("pgbouncer") or [])
    pgpool_hosts = list(groups.get("pgpool") or [])
    if not servers:
        raise AnsibleFilterError("the inventory has no hosts in group postgresql; there is nothing to plan")
    # What to read on each host: a server's variables, a PgBouncer host's, a pgpool-II node's, or several.
    names = {host: dict.fromkeys(SERVER_VARIABLES) for host in servers}
    for host in poolers:
        names[host] = names.get(host, {}) | dict.fromkeys(POOLER_VARIABLES)
    for host in pgpool_hosts:
        names[host] = names.get(host, {}) | dict.fromkeys(PGPOOL_VARIABLES)
    external = _external_servers(_plain(external_servers), hostvars)
    # Ansible's hostvars builds a host's variables on every lookup: take each host once.
    hostvars = {host: _model_variables(hostvars[host], wanted) for host, wanted in names.items()}
    primary_of = _primaries(hostvars, servers)
    resources = {host: _server_resources(hostvars, host, defaults) for host in servers}
    specs = {host: _server_spec(hostvars, host, resources[host], defaults) for host in servers}
    addresses = _addresses(hostvars, servers, external)
    server_cpus_of = {host: resources[host]["cpus"] for host in servers} | {
        name: server["cpus"] for name, server in external.items()
    }
    pooler_plans = {
        host: _pooler(hostvars, host, set(servers) | set(external), addresses, server_cpus_of, defaults, groups)
        for host in poolers
    }
    pgpool_plans = {
        host: _pgpool_node(hostvars, host, set(servers) | set(external), addresses, server_cpus_of, defaults)
        for host in pgpool_hosts
    }
    declared_clients = _direct_clients(direct_clients, groups, set(servers), external)
    role_limits = _role_limits(declared_clients, [*pooler_plans.values(), *pgpool_plans.values()], primary_of)
    clients, reserved_roles = _reserved_clients([dict(client) for client in declared_clients], resources, specs)
    try:
        budget = pg_connection_budget(
            {host: {"spec": specs[host]} for host in servers}
            | {
                name: {
                    "ceiling": server["max_connections"],
                    "superuser_reserved_connections": server["superuser_reserved_connections"],
                    "reserved_connections": server["reserved_connections"],
                }
                for name, server in external.items()
            },
            [plan["sizing"] | {"host": host} for host, plan in pooler_plans.items()],
            clients,
            [plan["sizing"] | {"host": host, "targets": plan["targets"]} for host, plan in pgpool_plans.items()],
        )
    except AnsibleFilterError as err:
        raise AnsibleFilterError("connection budget") from err

    standbys = {host: [] for host in servers}
    for host in sorted(servers):
        if primary_of[host] is not None:
            standbys[primary_of[host]].append(host)
    planned = {}
    problems = []
    warnings = []
    for host in _order(primary_of):
        fixed = _var(hostvars, host, "postgresql_tuning_max_connections", defaults)
        # A server nobody declared a client for has an unknown demand, not a demand of 0:
        # the engine then takes the profile's default instead of shutting everyone out.
        declared = (
            {"connection_demand": budget[host]["demand"], "active_demand": budget[host]["active_demand"]}
            if budget[host]["contributors"]
            else {}
        )
        spec = specs[host] | declared
        if fixed is not None:
            spec["max_connections"] = fixed
        entry = {
            "resources": resources[host],
            "primary": primary_of[host],
            "standbys": standbys[host],
            "spec": spec,
            "parity": [],
            "parity_overrides": {},
            "settings": None,
            "max_connections": None,
            "tuning_max_connections": None,
            "tuning_demand": spec.get("connection_demand"),
            "tuning_active_demand": spec.get("active_demand"),
            "tuning_reserved_connections": spec.get("reserved_connections", 0),
            "reserved_roles": reserved_roles[host],
            "role_connection_limits": role_limits[host],
            "spare_connections": None,
            "advice": None,
            "warnings": [],
            "tuning_overrides": spec["overrides"],
            "problem": None,
        } | budget[host]
        planned[host] = entry
        primary = planned.get(primary_of[host]) if primary_of[host] else None
        if primary is not None and primary["settings"] is None:
            entry["problem"] = f"{host}: its primary {primary_of[host]} has no plan, so parity cannot be checked"
            problems.append(entry["problem"])
            continue
        try:
            settings, report = tune_with_report(spec)
            if primary is not None:
                settings, report = _apply_parity(host, entry, spec, settings, report, primary)
        except AnsibleFilterError as err:
            if budget[host]["verdict"] == "over":
                entry["problem"] = _over_message(host, spec, budget[host], resources[host], err.message)
            else:
                entry["problem"] = f"{host}: {err.message}"
            problems.append(entry["problem"])
            continue
        entry["settings"] = settings
        entry["max_connections"] = settings["max_connections"]
        entry["tuning_max_connections"] = spec.get("max_connections")
        entry["tuning_overrides"] = spec["overrides"]
        entry["ceiling"] = report["ceiling"]  # pinned worker counts (parity) may move it
        entry["spare_connections"] = report["spare_connections"]
        entry["advice"] = report["advice"]
        entry["warnings"] = [f"{host}: {warning}" for warning in report["warnings"]]
        warnings.extend(entry["warnings"])
        entry["headroom"] = entry["ceiling"] - settings["max_connections"]
    for host in servers:
        planned[host].pop("spec")
    external_plans = {name: _external_plan(name, server, budget[name]) for name, server in external.items()}
    for entry in external_plans.values():
        if entry["problem"]:
            problems.append(entry["problem"])
        warnings.extend(entry["warnings"])
    for host, pooler_plan in pooler_plans.items():
        if pooler_plan["problem"]:
            problems.append(pooler_plan["problem"])
        warnings.extend(pooler_plan["warnings"])
    for pgpool_plan in pgpool_plans.values():
        # What everything else holds on each backend, which the pgpool role subtracts from the running
        # max_connections before it checks that this node's children fit; and pgpool_backends as the
        # role takes them, where a larger other_demand given is kept.
        pgpool_plan["pgpool_backends"] = []
        for backend in pgpool_plan["backends"]:
            entry, given = backend.pop("entry"), backend.pop("given_other_demand")
            backend["other_demand"] = budget[backend["target"]]["demand"] - pgpool_plan["sizing"]["connections"]
            pgpool_plan["pgpool_backends"].append(entry | {"other_demand": max(backend["other_demand"], given)})
    return {
        "servers": {host: planned[host] for host in servers},
        "external_servers": external_plans,
        "poolers": pooler_plans,
        "pgpool": pgpool_plans,
        "problems": problems,
        "warnings": warnings,
        "ok": not problems,
    }


def _apply_parity(host, entry, spec, settings, report, primary):
    """Raise the standby's parity settings to its primary's; recompute with them."""
    raised = {}
    for name in PARITY_DEFAULTS:
        theirs, ours = _parity_value(primary["settings"], name), _parity_value(settings, name)
        if theirs > ours:
            raised[name] = theirs
            entry["parity"].append({"setting": name, "primary": theirs, "own": ours, "raised_to": theirs})
    if not raised:
        return settings, report
    if "max_connections" in raised:
        spec["max_connections"] = raised.pop("max_connections")
    spec["overrides"] = spec["overrides"] | raised
    entry["parity_overrides"] = raised
    try:
        return tune_with_report(spec)
    except AnsibleFilterError as err:
        needs = ", ".join(f"{item['setting']} {item['primary']}" for item in entry["parity"])
        raise AnsibleFilterError(
            f"standby parity: {host} must run at least its primary {entry['primary']}'s "
            f"{needs} (PostgreSQL refuses to run a standby below them): give {host} as much memory as "
            f"{entry['primary']}, or lower the primary's demand"
        ) from err


def _size(size_bytes):
    return f"{size_bytes // MB}MB" if size_bytes % (1024 * MB) else f"{size_bytes // (1024 * MB)}GB"


def _client_words(pooler_plan):
    """A PgBouncer host's client demand against max_client_conn x processes, in words."""
    clients = pooler_plan["clients"]
    plural = "process" if clients["processes"] == 1 else "processes"
    limit = (
        f"max_client_conn {clients['max_client_conn']} ({clients['max_client_conn_source']}) x {clients['processes']} "
        f"{plural} = {clients['capacity']}"
    )
    if clients["verdict"] == "undeclared":
        return f"clients: none declared (headroom_pgbouncer_clients); {limit}"
    return f"clients {clients['demand']} ({_application_words(clients['applications'])}) against {limit}"


def _external_line(name, server):
    contributors = ", ".join(f"{item['name']} {item['connections']}" for item in server["contributors"])
    head = (
        f"{name} (outside the inventory, {server['address']}:{server['port']}): demand {server['demand']} "
        f"({contributors or 'none'}) + {server['required_max_connections'] - server['demand']} reserved against its "
        f"declared max_connections {server['max_connections']}"
    )
    return f"{head}; PROBLEM: {server['problem']}" if server["problem"] else f"{head}; headroom {server['headroom']}"


def fleet_plan_lines(plan):
    """One line per server and per PgBouncer host of a fleet_plan result, for the console."""
    lines = []
    for name, server in plan["servers"].items():
        resources = server["resources"]
        standby = f" (standby of {server['primary']})" if server["primary"] else ""
        contributors = ", ".join(f"{item['name']} {item['connections']}" for item in server["contributors"])
        head = (
            f"{name}{standby}: {_size(resources['memory'])} ({resources['memory_source']}), {resources['cpus']} CPUs, "
            f"PostgreSQL {resources['version']}; demand {server['demand']} ({contributors or 'none'})"
        )
        if server["settings"]:
            settings = server["settings"]
            spare = "" if server["spare_connections"] is None else f" ({server['spare_connections']} spare)"
            lines.append(
                f"{head}; max_connections {server['max_connections']}{spare}, ceiling {server['ceiling']}, headroom "
                f"{server['headroom']}, shared_buffers {settings['shared_buffers']}, work_mem {settings['work_mem']}"
            )
        else:
            lines.append(f"{head}; PROBLEM: {server['problem']}")
        if server["role_connection_limits"]:
            lines.append("  shares (CONNECTION LIMIT): " + ", ".join(
                f"{role} {limit}" for role, limit in server["role_connection_limits"].items()))
        lines += [f"  warning: {warning}" for warning in server["warnings"]]
    for name, server in plan.get("external_servers", {}).items():
        lines.append(_external_line(name, server))
        lines += [f"  warning: {warning}" for warning in server["warnings"]]
    for name, pooler in plan["poolers"].items():
        head = (
            f"{name} (PgBouncer): {_client_words(pooler)}; {pooler['server_connection_allowance']} server connections "
            f"to {', '.join(pooler['targets'])}"
        )
        lines.append(f"{head}; PROBLEM: {pooler['problem']}" if pooler["problem"] else head)
        lines += [f"  warning: {warning}" for warning in pooler["warnings"]]
    for name, node in plan.get("pgpool", {}).items():
        lines.append(f"{name} (pgpool-II): {_pgpool_words(node)}")
    return lines


def _pgpool_words(node):
    """A pgpool-II node's sizing and what it holds on each backend, in words."""
    sizing = node["sizing"]
    cancel = " x 2 (cancel_headroom)" if sizing["cancel_headroom"] else ""
    return (
        f"num_init_children {sizing['num_init_children']} ({sizing['num_init_children_source']}) x max_pool "
        f"{sizing['max_pool']}{cancel} + {sizing['worker_connections']} checks + {sizing['closing_margin']} closing "
        f"margin = {sizing['connections']} connections on each of {', '.join(node['targets'])}"
    )


def fleet_plan_markdown(plan):
    """A fleet_plan result as the Markdown of reports/plan.md."""
    servers, poolers, external = plan["servers"], plan["poolers"], plan.get("external_servers", {})
    outside = f", {len(external)} server(s) outside the inventory" if external else ""
    pgpool = plan.get("pgpool", {})
    nodes = f", {len(pgpool)} pgpool-II node(s)" if pgpool else ""
    out = [
        "# Fleet plan",
        "",
        f"{len(servers)} PostgreSQL server(s){outside}, {len(poolers)} PgBouncer host(s){nodes}.",
        "",
    ]
    if plan["problems"]:
        out += [f"**{len(plan['problems'])} problem(s): no host may be changed until they are fixed.**", ""]
        out += [f"- {problem}" for problem in plan["problems"]] + [""]
    else:
        out += [
            "Every server's demand fits its memory ceiling, and every PgBouncer host's declared clients fit its "
            "max_client_conn.",
            "",
        ]
    if plan.get("warnings"):
        out += [f"{len(plan['warnings'])} warning(s):", ""] + [f"- {warning}" for warning in plan["warnings"]] + [""]
    out += [
        "## Servers",
        "",
        "Spare: slots above demand + reserved for clients nobody declared. Advice: connections the server's "
        "CPUs run well at once; above it, pool.",
        "",
        "| server | primary | memory (source) | CPUs | version | demand | spare | max_connections | ceiling | "
        "advice | headroom | verdict | shared_buffers | work_mem | effective_cache_size |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in servers.items():
        r, settings = s["resources"], s["settings"] or {}
        cells = [
            name, s["primary"] or "", f"{_size(r['memory'])} ({r['memory_source']})", r["cpus"], r["version"],
            s["demand"], "" if s["spare_connections"] is None else s["spare_connections"],
            "" if s["max_connections"] is None else s["max_connections"], s["ceiling"],
            "" if s["advice"] is None else s["advice"], s["headroom"],
            s["verdict"] if settings else "problem", settings.get("shared_buffers", ""), settings.get("work_mem", ""),
            settings.get("effective_cache_size", ""),
        ]
        out.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    if external:
        out += [
            "",
            "## Servers outside the inventory",
            "",
            "Declared in headroom_external_servers: headroom changes nothing on them, and counts the fleet's pools "
            "and direct clients against the max_connections their operator set.",
            "",
            "| server | address | max_connections (declared) | reserved | demand | headroom | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        out += [
            f"| {name} | {e['address']}:{e['port']} | {e['max_connections']} | "
            f"{e['required_max_connections'] - e['demand']} | {e['demand']} | {e['headroom']} | {e['verdict']} |"
            for name, e in external.items()
        ]
    out += ["", "## Demand by contributor", ""]
    demand_of = dict(servers) | external
    for name, s in demand_of.items():
        if not s["contributors"] and not s.get("parity"):
            continue
        out += [f"### {name}", ""]
        out += [f"- {c['name']} ({c['kind']}): {c['connections']}" for c in s["contributors"]]
        out.append(
            f"- reserved: superuser_reserved_connections {s['superuser_reserved_connections']}, "
            f"reserved_connections {s['reserved_connections']}"
        )
        out += [
            f"- standby parity: {p['setting']} raised from {p['own']} to {p['raised_to']} (primary {s['primary']})"
            for p in s.get("parity", [])
        ]
        out.append("")
    out += [
        "## PgBouncer hosts",
        "",
        "Clients: the client connections the applications declared (headroom_pgbouncer_clients) against "
        "max_client_conn x processes; max_client_conn is given (inventory), sized (demand + spare) or the default.",
        "",
        "| host | processes | pool_mode | default_pool_size | server connections (allowance) | servers | "
        "client demand | max_client_conn x processes | clients verdict | nofile_limit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in poolers.items():
        sizing, clients = p["sizing"], p["clients"]
        out.append(
            f"| {name} | {sizing['processes']} | {sizing['pool_mode']} | {sizing['default_pool_size']} | "
            f"{p['server_connection_allowance']} | {', '.join(p['targets'])} | "
            f"{'' if clients['demand'] is None else clients['demand']} | "
            f"{clients['max_client_conn']} ({clients['max_client_conn_source']}) x {clients['processes']} = "
            f"{clients['capacity']} | {clients['verdict']} | {sizing['nofile_limit']} |"
        )
    if pgpool:
        out += [
            "",
            "## pgpool-II nodes",
            "",
            "Each node holds up to num_init_children x max_pool connections on every backend, and its health and "
            "replication checks; clients beyond num_init_children wait in its listen queue.",
            "",
            "| node | num_init_children | max_pool | connections per backend | active per backend | backends |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        out += [
            f"| {name} | {n['sizing']['num_init_children']} ({n['sizing']['num_init_children_source']}) | "
            f"{n['sizing']['max_pool']} | {n['sizing']['connections']} | {n['sizing']['active']} | "
            f"{', '.join(n['targets'])} |"
            for name, n in pgpool.items()
        ]
    declared = {name: p["clients"]["applications"] for name, p in poolers.items() if p["clients"]["applications"]}
    if declared:
        out += ["", "### Clients by PgBouncer host", ""]
        for name, applications in declared.items():
            out += [f"- {name}: " + "; ".join(
                f"{app['name']} {app['connections']} x {app['instances']} = {app['client_connections']}"
                for app in applications
            )]
    shares = [(name, "CONNECTION LIMIT", s["role_connection_limits"]) for name, s in servers.items()] + [
        (name, kind, p["clients"][key])
        for name, p in poolers.items()
        for kind, key in (("max_user_client_connections", "user_limits"), ("max_db_client_connections", "database_limits"))
    ]
    shares = [(name, kind, limits) for name, kind, limits in shares if limits]
    if shares:
        out += ["", "## Enforced shares", "", "| host | enforced as | shares |", "| --- | --- | --- |"]
        out += [
            f"| {name} | {kind} | {', '.join(f'{who} {limit}' for who, limit in limits.items())} |"
            for name, kind, limits in shares
        ]
    out += ["", "## Computed settings", ""]
    for name, s in servers.items():
        if s["settings"]:
            out += [f"### {name}", "", "| setting | value |", "| --- | --- |"]
            out += [f"| {key} | {value} |" for key, value in s["settings"].items()] + [""]
    return "\n".join(out) + "\n"


def fleet_plan_report(hostvars, groups, direct_clients=None, defaults=None, external_servers=None):
    """fleet_plan, rendered as everything plan.yml writes and prints, in one call.

    reports/plan.json is the plan as to_nice_json(sort_keys=true) writes it. Planning and
    rendering in one call keeps the plan (tens of MB on ten thousand hosts) out of
    Ansible's variables: Ansible wraps a filter's result for lazy templating before the
    next filter or task sees it, and walking that wrapper costs more than the plan.
    """
    plan = fleet_plan(hostvars, groups, direct_clients, defaults, external_servers)
    return {
        "json": json.dumps(plan, indent=4, sort_keys=True, separators=(",", ": ")) + "\n",
        "markdown": fleet_plan_markdown(plan),
        "lines": fleet_plan_lines(plan),
        "problems": plan["problems"],
        "warnings": plan["warnings"],
    }


class FilterModule:
    """Fleet plan filters (the capacity filters are in fleet_capacity.py)."""

    def filters(self):
        return {
            "fleet_plan": fleet_plan,
            "fleet_plan_lines": fleet_plan_lines,
            "fleet_plan_markdown": fleet_plan_markdown,
            "fleet_plan_report": fleet_plan_report,
        }
