"""The pg_connection_budget filter: server connections the whole fleet may open, per PostgreSQL server.

Nothing in PgBouncer or PostgreSQL adds up pools across PgBouncer processes and hosts
(facts.md: max_db_connections caps one database entry in one process). This filter
does, and compares the sum with each server's memory ceiling from pg_max_connections.
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_inputs import (
    as_count_or_names,
    as_int,
    check_keys,
    check_mapping,
)
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_sizing import (
    DEFAULT_SUPERUSER_RESERVED,
    max_connections_report,
)

SERVER_OPTIONAL = ("ceiling", "spec", "superuser_reserved_connections", "reserved_connections")

#: A pooler is a pgbouncer_tune result plus ``host``; keys of that result other than
#: processes and databases are accepted and not used.
POOLER_REQUIRED = ("host", "databases")
POOLER_OPTIONAL = (
    "processes",
    "pool_mode",
    "default_pool_size",
    "reserve_pool_size",
    "max_db_connections",
    "max_client_conn",
    "max_client_conn_source",
    "client_demand",
    "client_capacity",
    "so_reuseport",
    "nofile_limit",
    "server_connections",
    "server_connections_per_process",
    "estimated_memory",
    "notes",
)
POOL_REQUIRED = ("name", "target")
POOL_OPTIONAL = (
    "pool_size",
    "reserve_pool_size",
    "users",
    "user",
    "pools",
    "max_db_connections",
    "pool_mode",
    "server_connections",
)
#: A pgpool-II node: a pgpool_demand result plus ``host`` and ``targets`` (its backends).
PGPOOL_REQUIRED = ("host", "targets", "connections", "active")
PGPOOL_OPTIONAL = (
    "num_init_children",
    "num_init_children_source",
    "max_pool",
    "cancel_headroom",
    "pool_connections",
    "worker_connections",
    "closing_margin",
)
CLIENT_REQUIRED = ("name", "target", "connections")
CLIENT_OPTIONAL = ("instances", "hosts", "active")


def _server(name, entry):
    what = f"servers.{name}"
    check_keys(entry, (), SERVER_OPTIONAL, what)
    if ("ceiling" in entry) == ("spec" in entry):
        raise AnsibleFilterError(f"{what} needs exactly one of ceiling (an int from pg_max_connections) or spec")
    if "spec" in entry:
        # The ceiling depends on memory only; a stale demand in the spec must not fail the budget.
        spec = {
            key: value
            for key, value in check_mapping(entry["spec"], f"{what}.spec").items()
            if key not in ("connection_demand", "active_demand", "spare_connections", "max_connections")
        }
        report = max_connections_report(spec)
        ceiling = report["ceiling"]
        superuser, reserved = report["superuser_reserved_connections"], report["reserved_connections"]
    else:
        ceiling = as_int(entry["ceiling"], f"{what}.ceiling", minimum=0)
        superuser, reserved = DEFAULT_SUPERUSER_RESERVED, 0
    superuser = as_int(
        entry.get("superuser_reserved_connections", superuser), f"{what}.superuser_reserved_connections", minimum=0
    )
    reserved = as_int(entry.get("reserved_connections", reserved), f"{what}.reserved_connections", minimum=0)
    return {"ceiling": ceiling, "superuser_reserved_connections": superuser, "reserved_connections": reserved}


def _target(servers, target, who):
    if target not in servers:
        raise AnsibleFilterError(
            f"{who} targets {target!r}, which is not among the servers ({', '.join(sorted(map(str, servers))) or 'none'})"
        )
    return target


def _pooler_contributions(pooler, position, servers):
    what = f"poolers[{position}]"
    check_keys(pooler, POOLER_REQUIRED, POOLER_OPTIONAL, what)
    host = pooler["host"]
    processes = as_int(pooler.get("processes", 1), f"{what}.processes", minimum=1)
    databases = pooler["databases"]
    if not isinstance(databases, (list, tuple)):
        raise AnsibleFilterError(f"{what}.databases must be a list, got {databases!r}")
    for index, pool in enumerate(databases):
        where = f"{what}.databases[{index}]"
        check_keys(pool, POOL_REQUIRED, POOL_OPTIONAL, where)
        target = _target(servers, pool["target"], f"pgbouncer {host} database {pool['name']}")
        pool_size = pool.get("pool_size", pooler.get("default_pool_size"))
        if pool_size is None:
            raise AnsibleFilterError(f"{where} ({pool['name']}) needs pool_size, or the pooler needs default_pool_size")
        pool_size = as_int(pool_size, f"{where}.pool_size", minimum=1)
        reserve = as_int(
            pool.get("reserve_pool_size", pooler.get("reserve_pool_size", 0)), f"{where}.reserve_pool_size", minimum=0
        )
        # pgbouncer_tune gives each entry's pools (its users, plus the auth user's in auth_query mode).
        if pool.get("pools") is not None:
            pools = as_int(pool["pools"], f"{where}.pools", minimum=1)
        else:
            pools = 1 if pool.get("user") is not None else as_count_or_names(pool.get("users", 1), f"{where}.users")
        cap = as_int(pool.get("max_db_connections") or 0, f"{where}.max_db_connections", minimum=0)
        per_process = (pool_size + reserve) * pools
        if cap:
            per_process = min(per_process, cap)
        plural = "process" if processes == 1 else "processes"
        yield (
            target,
            {
                "name": f"pgbouncer {host} ({processes} {plural}) -> {pool['name']}",
                "kind": "pgbouncer",
                "connections": per_process * processes,
                # A pool's server connections are all busy whenever its clients wait.
                "active": per_process * processes,
            },
        )


def _pgpool_contributions(node, position, servers):
    """A pgpool-II node opens its children's pools and its checks to every backend it fronts."""
    what = f"pgpool_nodes[{position}]"
    check_keys(node, PGPOOL_REQUIRED, PGPOOL_OPTIONAL, what)
    connections = as_int(node["connections"], f"{what}.connections", minimum=0)
    active = as_int(node["active"], f"{what}.active", minimum=0, maximum=connections)
    if not isinstance(node["targets"], (list, tuple)) or not node["targets"]:
        raise AnsibleFilterError(f"{what}.targets must be a non-empty list of servers, got {node['targets']!r}")
    shape = (
        f" (num_init_children {node['num_init_children']} x max_pool {node['max_pool']}"
        f"{' x 2' if node.get('cancel_headroom') else ''} + {connections - node.get('pool_connections', 0)} checks)"
        if "num_init_children" in node and "max_pool" in node
        else ""
    )
    for target in dict.fromkeys(node["targets"]):
        _target(servers, target, f"pgpool-II node {node['host']}")
        yield target, {"name": f"pgpool {node['host']}{shape}", "kind": "pgpool", "connections": connections, "active": active}


def client_connections(client, what):
    """A declared client's connections per instance and its instances: ``instances`` (a count) or ``hosts``.

    One counting for every declared client, direct (headroom_direct_clients, here and in
    fleet_plan's reserved clients) or through PgBouncer (headroom_pgbouncer_clients):
    the client opens connections x instances.
    """
    if "instances" in client and "hosts" in client:
        raise AnsibleFilterError(f"{what} ({client['name']}) gives both instances and hosts; give one")
    connections = as_int(client["connections"], f"{what}.connections", minimum=0)
    instances = as_count_or_names(client.get("instances", client.get("hosts", 1)), f"{what}.instances")
    return connections, instances


def _client_contribution(client, position, servers):
    what = f"direct_clients[{position}]"
    check_keys(client, CLIENT_REQUIRED, CLIENT_OPTIONAL, what)
    target = _target(servers, client["target"], f"direct client {client['name']}")
    connections, instances = client_connections(client, what)
    active = connections
    if client.get("active") is not None:
        active = as_int(client["active"], f"{what}.active", minimum=0, maximum=connections)
    name = str(client["name"]) if instances == 1 else f"{client['name']} ({instances} instances)"
    return target, {"name": name, "kind": "direct", "connections": connections * instances, "active": active * instances}


def pg_connection_budget(servers, poolers=None, direct_clients=None, pgpool_nodes=None):
    """Per server: connection demand from every pooler and direct client, against its memory ceiling.

    demand counts, per pooler and database entry, processes x min(max_db_connections,
    (pool_size + reserve_pool_size) x users), plus each direct client's connections x
    instances, plus each pgpool-II node's connections (pgpool_demand) to each of its backends.
    active_demand counts the part of it that may run queries at once: every PgBouncer pool
    connection, one per pgpool-II child and check, and each direct client's ``active``
    (default: all its connections).
    required_max_connections adds the reserved slots. A server over its
    ceiling gets verdict 'over'; the filter does not raise for it, so callers decide.
    """
    check_mapping(servers, "servers")
    budget = {name: _server(name, entry) for name, entry in servers.items()}
    contributions = {name: [] for name in budget}
    for position, pooler in enumerate(poolers or []):
        for target, item in _pooler_contributions(pooler, position, budget):
            contributions[target].append(item)
    for position, client in enumerate(direct_clients or []):
        target, item = _client_contribution(client, position, budget)
        contributions[target].append(item)
    for position, node in enumerate(pgpool_nodes or []):
        for target, item in _pgpool_contributions(node, position, budget):
            contributions[target].append(item)

    result = {}
    for name, server in budget.items():
        contributors = sorted(contributions[name], key=lambda item: (-item["connections"], item["name"]))
        demand = sum(item["connections"] for item in contributors)
        active_demand = sum(item["active"] for item in contributors)
        required = demand + server["superuser_reserved_connections"] + server["reserved_connections"]
        result[name] = {
            "demand": demand,
            "active_demand": active_demand,
            "required_max_connections": required,
            "ceiling": server["ceiling"],
            "headroom": server["ceiling"] - required,
            "verdict": "ok" if required <= server["ceiling"] else "over",
            "superuser_reserved_connections": server["superuser_reserved_connections"],
            "reserved_connections": server["reserved_connections"],
            "contributors": contributors,
        }
    return result


class FilterModule:
    """Fleet connection budget filter."""

    def filters(self):
        return {"pg_connection_budget": pg_connection_budget}
