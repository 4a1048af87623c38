"""The pgpool_tune filter: num_init_children, max_pool and the listen queue of pgpool-II nodes.

Facts it relies on (pgpool-II documentation and source, 4.3 to 4.7):

* The sizing rule, from the documentation of ``num_init_children`` (doc/src/sgml/
  connection-settings.sgml): "max_pool, num_init_children, max_connections,
  superuser_reserved_connections must satisfy the following formula:
  max_pool*num_init_children <= (max_connections - superuser_reserved_connections)
  (no query canceling needed); max_pool*num_init_children*2 <= (max_connections -
  superuser_reserved_connections) (query canceling needed)". Every child can hold
  ``max_pool`` cached connections to *each* backend, so the rule holds per backend, and
  every pgpool-II node in front of the same servers opens as many again.
* PostgreSQL 16+ also keeps ``reserved_connections`` slots from ordinary roles
  (facts.md), and other clients of the server (``other_demand``) use slots pgpool-II
  cannot; both come off the server's side of the rule.
* pgpool-II opens its own connections to each backend besides the children's: the health
  check process (one per backend) and the streaming replication check worker (one per
  backend), each while it checks (src/main/health_check.c, src/streaming_replication/
  pool_worker_child.c). ``worker_connections`` (default 2) counts them per node and backend.
* PostgreSQL frees a slot when the backend process exits, after its client closed the
  connection, not at the close. A child that drops a cached connection to open another (more
  (user, database) pairs than max_pool, a session on the uncached postgres database) and the
  checks that reconnect every period can meet the slot of their previous connection still
  taken: measured on Debian 13 (pgpool-II 4.6, PostgreSQL 17) with the rule filled to the
  last slot, 1000 clients through pgbench --connect met "remaining connection slots are
  reserved" once. ``closing_margin`` (default 2 per node and backend) keeps room for them.
* Clients beyond ``num_init_children`` wait in the kernel's listen queue "not rejected with
  an error, like PostgreSQL" unless ``reserved_connections`` (pgpool-II's own) is 1 or more
  (num_init_children, reserved_connections). src/protocol/child.c: with
  ``reserved_connections > 0`` a child that accepts a connection while more than
  ``num_init_children - reserved_connections`` clients are connected answers FATAL 53300
  "Sorry, too many clients already". So queueing means ``reserved_connections = 0``.
* The queue is ``listen(fd, num_init_children * listen_backlog_multiplier)``, capped at
  10000 by pgpool-II (PGPOOLMAXLITSENQUEUELENGTH, src/main/pgpool_main.c) and at
  ``net.core.somaxconn`` by the kernel. A TCP client beyond a full queue is not refused at
  once but retried by the kernel, slowly ("connecting is getting slow because of retries").
"""

import math

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_inputs import as_int, check_keys
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_sizing import best_active_connections

#: pgpool-II's own defaults (num_init_children 32, max_pool 4, listen_backlog_multiplier 2).
PGPOOL_DEFAULT_MAX_POOL = 4
PGPOOL_DEFAULT_LISTEN_BACKLOG_MULTIPLIER = 2

#: The most a listen() backlog can be in pgpool-II (PGPOOLMAXLITSENQUEUELENGTH).
PGPOOL_MAX_LISTEN_BACKLOG = 10000

#: Clients each node is planned to queue when the spec declares none: the same 1000 the
#: pgbouncer role accepts by default (max_client_conn).
DEFAULT_CLIENT_DEMAND = 1000

#: pgpool-II's own connections to each backend per node: the health check and the
#: streaming replication check.
DEFAULT_WORKER_CONNECTIONS = 2

#: Slots per node and backend kept for connections whose backend has not exited yet.
DEFAULT_CLOSING_MARGIN = 2

#: PostgreSQL's default superuser_reserved_connections.
DEFAULT_SUPERUSER_RESERVED = 3

SPEC_REQUIRED = ("nodes", "backends")
SPEC_OPTIONAL = (
    "num_init_children",
    "max_pool",
    "pairs",
    "client_demand",
    "listen_backlog_multiplier",
    "reserved_connections",
    "worker_connections",
    "closing_margin",
    "cancel_headroom",
    "somaxconn",
)
DEMAND_OPTIONAL = (
    "num_init_children",
    "max_pool",
    "pairs",
    "server_cpus",
    "cancel_headroom",
    "worker_connections",
    "closing_margin",
)
BACKEND_REQUIRED = ("name", "max_connections")
BACKEND_OPTIONAL = ("superuser_reserved_connections", "reserved_connections", "other_demand")


def _backend(entry, position):
    what = f"backends[{position}]"
    check_keys(entry, BACKEND_REQUIRED, BACKEND_OPTIONAL, what)
    name = entry["name"]
    if not isinstance(name, str) or not name:
        raise AnsibleFilterError(f"{what}.name must be a non-empty string, got {name!r}")
    backend = {
        "name": name,
        "max_connections": as_int(entry["max_connections"], f"{what}.max_connections", minimum=1),
        "superuser_reserved_connections": as_int(
            entry.get("superuser_reserved_connections", DEFAULT_SUPERUSER_RESERVED),
            f"{what}.superuser_reserved_connections", minimum=0),
        "reserved_connections": as_int(entry.get("reserved_connections", 0), f"{what}.reserved_connections", minimum=0),
        "other_demand": as_int(entry.get("other_demand", 0), f"{what}.other_demand", minimum=0),
    }
    backend["ordinary_slots"] = (
        backend["max_connections"] - backend["superuser_reserved_connections"] - backend["reserved_connections"]
    )
    return backend


def _optional_int(spec, key, minimum):
    value = spec.get(key)
    return None if value is None else as_int(value, key, minimum=minimum)


def _does_not_fit(backend, nodes, children, max_pool, factor, workers, margin):
    """The sentence that says why ``children`` x ``max_pool`` does not fit ``backend``."""
    wanted = nodes * children * max_pool * factor
    return (
        f"{nodes} pgpool-II node(s) x num_init_children {children} x max_pool {max_pool}"
        + (" x 2 (cancel_headroom)" if factor == 2 else "")
        + f" = {wanted} connections do not fit backend {backend['name']}: max_connections {backend['max_connections']}"
        f" - superuser_reserved_connections {backend['superuser_reserved_connections']}"
        f" - reserved_connections {backend['reserved_connections']} - other_demand {backend['other_demand']}"
        f" - {nodes} x ({workers} check connections + {margin} closing margin) = {backend['room']}"
        " (pgpool-II documentation, num_init_children: max_pool*num_init_children <="
        " max_connections - superuser_reserved_connections, for each backend and node)"
    )


def pgpool_tune(spec):
    """Size pgpool-II so that every node x child x pool fits every backend server.

    The rule is the pgpool-II documentation's, under num_init_children (see the module
    docstring): per backend, ``nodes x num_init_children x max_pool (x 2 with
    cancel_headroom) <= max_connections - superuser_reserved_connections -
    reserved_connections - other_demand - nodes x (worker_connections + closing_margin)``.
    The tightest backend
    decides. max_pool is given, else ``min(4, pairs)`` (one cached connection per
    (user, database) pair a child serves, at most pgpool-II's default 4); num_init_children
    is given, else the most that fit. A given value that does not fit raises an error
    naming the backend and the numbers.

    reserved_connections (pgpool-II's) is 0 unless given, so clients beyond the children
    queue; listen_backlog_multiplier is given, else ``max(2, ceil(client_demand /
    num_init_children))`` so the queue holds the declared clients, within pgpool-II's cap of
    10000 (a note says when ``somaxconn`` is smaller).
    """
    check_keys(spec, SPEC_REQUIRED, SPEC_OPTIONAL, "pgpool_tune spec")
    nodes = as_int(spec["nodes"], "nodes", minimum=1)
    entries = spec["backends"]
    if not isinstance(entries, (list, tuple)) or not entries:
        raise AnsibleFilterError(f"backends must be a non-empty list of backend servers, got {entries!r}")
    backends = [_backend(entry, position) for position, entry in enumerate(entries)]
    workers, margin = _own_connections(spec)
    factor = _cancel_factor(spec)
    cancel_headroom = factor == 2
    notes = []

    for backend in backends:
        backend["room"] = backend["ordinary_slots"] - backend["other_demand"] - nodes * (workers + margin)
    tightest = min(backends, key=lambda backend: backend["room"])
    per_node = tightest["room"] // (nodes * factor) if tightest["room"] > 0 else 0
    if per_node < 1:
        raise AnsibleFilterError(
            "no room for pgpool-II: " + _does_not_fit(tightest, nodes, 1, 1, factor, workers, margin)
            + "; raise max_connections there, lower other_demand or run fewer nodes"
        )

    given_children = _optional_int(spec, "num_init_children", 1)
    given_max_pool = _optional_int(spec, "max_pool", 1)
    pairs = as_int(spec.get("pairs", 1), "pairs", minimum=1)
    if given_max_pool is not None:
        max_pool = given_max_pool
    elif given_children is not None:
        max_pool = max(1, min(PGPOOL_DEFAULT_MAX_POOL, pairs, per_node // given_children))
    else:
        max_pool = min(PGPOOL_DEFAULT_MAX_POOL, pairs, per_node)
    children = given_children if given_children is not None else per_node // max_pool
    if children < 1:
        raise AnsibleFilterError("max_pool too large: " + _does_not_fit(tightest, nodes, 1, max_pool, factor, workers, margin))
    for backend in backends:
        if nodes * children * max_pool * factor > backend["room"]:
            raise AnsibleFilterError(_does_not_fit(backend, nodes, children, max_pool, factor, workers, margin))
    if max_pool < pairs:
        notes.append(
            f"max_pool {max_pool} is below the {pairs} (user, database) pairs: a child that serves more pairs"
            " drops its oldest cached connection and connects again."
        )

    reserved = _optional_int(spec, "reserved_connections", 0)
    reserved = 0 if reserved is None else reserved
    if reserved >= children:
        raise AnsibleFilterError(
            f"reserved_connections {reserved} must be below num_init_children {children}: pgpool-II would refuse every client"
        )
    if reserved > 0:
        notes.append(
            f"reserved_connections {reserved}: pgpool-II refuses the client beyond {children - reserved} connected"
            " ones with FATAL 'Sorry, too many clients already' instead of queueing it."
        )

    client_demand = as_int(spec.get("client_demand", DEFAULT_CLIENT_DEMAND), "client_demand", minimum=1)
    multiplier = _optional_int(spec, "listen_backlog_multiplier", 1)
    if multiplier is None:
        multiplier = max(PGPOOL_DEFAULT_LISTEN_BACKLOG_MULTIPLIER, math.ceil(client_demand / children))
        multiplier = min(multiplier, max(1, PGPOOL_MAX_LISTEN_BACKLOG // children))
    listen_backlog = min(children * multiplier, PGPOOL_MAX_LISTEN_BACKLOG)
    somaxconn = _optional_int(spec, "somaxconn", 1)
    if somaxconn is not None and somaxconn < listen_backlog:
        notes.append(
            f"the kernel caps the listen queue at net.core.somaxconn {somaxconn}, below num_init_children {children}"
            f" x listen_backlog_multiplier {multiplier} = {listen_backlog}: raise net.core.somaxconn, or clients"
            " beyond it connect slowly (the kernel retries them)."
        )
    queued = min(listen_backlog, somaxconn or listen_backlog)
    if reserved == 0 and queued < client_demand:
        notes.append(
            f"the listen queue holds {queued} waiting clients per node, fewer than the {client_demand} declared."
        )

    per_node_pools = children * max_pool
    return {
        "nodes": nodes,
        "num_init_children": children,
        "max_pool": max_pool,
        "reserved_connections": reserved,
        "listen_backlog_multiplier": multiplier,
        "listen_backlog": listen_backlog,
        "client_demand": client_demand,
        "cancel_headroom": cancel_headroom,
        "connections_per_node": per_node_pools,
        "worker_connections": workers,
        "closing_margin": margin,
        "backends": [
            {
                "name": backend["name"],
                "max_connections": backend["max_connections"],
                "room": backend["room"],
                "connections": nodes * per_node_pools,
                "worker_connections": nodes * workers,
                "spare": backend["room"] - nodes * per_node_pools * factor,
            }
            for backend in backends
        ],
        "tightest_backend": tightest["name"],
        "notes": notes,
    }


def _own_connections(spec):
    """The node's checks and closing margin per backend: (worker_connections, closing_margin)."""
    return (
        as_int(spec.get("worker_connections", DEFAULT_WORKER_CONNECTIONS), "worker_connections", minimum=0),
        as_int(spec.get("closing_margin", DEFAULT_CLOSING_MARGIN), "closing_margin", minimum=0),
    )


def _cancel_factor(spec):
    cancel_headroom = spec.get("cancel_headroom", False)
    if not isinstance(cancel_headroom, bool):
        raise AnsibleFilterError(f"cancel_headroom must be true or false, got {cancel_headroom!r}")
    return 2 if cancel_headroom else 1


def pgpool_demand(spec):
    """What one pgpool-II node opens to each of its backends, chosen before their max_connections is known.

    For the fleet plan: ``max_pool`` is given, else ``min(4, pairs)`` as in pgpool_tune;
    ``num_init_children`` is given, else the pool rule of thumb ``4 x server_cpus + 4`` for the
    smallest backend's CPUs (each child runs at most one query at a time, so the children are
    the node's active connections; clients beyond them wait in the listen queue). The node
    opens ``num_init_children x max_pool (x 2 with cancel_headroom) + worker_connections +
    closing_margin`` connections to each backend; ``active`` counts one per child and the checks.
    """
    check_keys(spec, (), DEMAND_OPTIONAL, "pgpool_demand spec")
    factor = _cancel_factor(spec)
    workers, margin = _own_connections(spec)
    pairs = as_int(spec.get("pairs", 1), "pairs", minimum=1)
    max_pool = _optional_int(spec, "max_pool", 1) or min(PGPOOL_DEFAULT_MAX_POOL, pairs)
    children = _optional_int(spec, "num_init_children", 1)
    source = "given"
    if children is None:
        server_cpus = _optional_int(spec, "server_cpus", 1)
        if server_cpus is None:
            raise AnsibleFilterError(
                "num_init_children is not given and the backends' CPUs are unknown, so the pool rule of thumb"
                " (4 x server_cpus + 4) cannot choose it: give num_init_children, or the backends' CPUs"
            )
        children = best_active_connections(server_cpus)
        source = f"pool rule of thumb: 4 x {server_cpus} CPUs + 4"
    return {
        "num_init_children": children,
        "num_init_children_source": source,
        "max_pool": max_pool,
        "cancel_headroom": factor == 2,
        "pool_connections": children * max_pool * factor,
        "worker_connections": workers,
        "closing_margin": margin,
        "connections": children * max_pool * factor + workers + margin,
        "active": children + workers,
    }


class FilterModule:
    """pgpool-II sizing."""

    def filters(self):
        return {"pgpool_tune": pgpool_tune, "pgpool_demand": pgpool_demand}
