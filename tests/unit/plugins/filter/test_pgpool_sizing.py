"""pgpool_tune: num_init_children x max_pool per node fits every backend (the pgpool-II documentation's rule)."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pgpool_sizing import FilterModule, pgpool_demand, pgpool_tune


def server(name="db1", max_connections=100, **extra):
    return {"name": name, "max_connections": max_connections, **extra}


def spec(backends=None, nodes=1, **extra):
    return {"nodes": nodes, "backends": backends or [server()], **extra}


def test_the_plugin_registers_pgpool_tune():
    assert set(FilterModule().filters()) == {"pgpool_tune", "pgpool_demand"}


@pytest.mark.parametrize(
    ("sentence", "given", "expected"),
    [
        (
            "one node, one pair: 100 - 3 superuser slots - 2 check connections - 2 closing margin = 93 children of one pool",
            spec(),
            {"num_init_children": 93, "max_pool": 1, "reserved_connections": 0, "connections_per_node": 93},
        ),
        (
            "two nodes share the backend: each gets half of the room left after both nodes' checks, (100 - 3 - 8) // 2",
            spec(nodes=2),
            {"num_init_children": 44, "max_pool": 1},
        ),
        (
            "three (user, database) pairs give max_pool 3 and a third of the children",
            spec(pairs=3),
            {"max_pool": 3, "num_init_children": 31},
        ),
        (
            "max_pool never goes above pgpool-II's default of 4 on its own",
            spec(pairs=9),
            {"max_pool": 4, "num_init_children": 23},
        ),
        (
            "the tightest backend decides: a standby with fewer slots limits every child",
            spec([server("primary", 200), server("standby", 60)]),
            {"num_init_children": 53, "tightest_backend": "standby"},
        ),
        (
            "PostgreSQL 16's reserved_connections and other clients come off the server's side",
            spec([server(reserved_connections=5, other_demand=10)]),
            {"num_init_children": 78},
        ),
        (
            "cancel_headroom is the documentation's query-canceling rule: twice the connections fit",
            spec(cancel_headroom=True),
            {"num_init_children": 46},
        ),
        (
            "a given num_init_children that fits is kept, max_pool sized below what is left",
            spec(num_init_children=20, pairs=4),
            {"num_init_children": 20, "max_pool": 4},
        ),
        (
            "a given num_init_children takes a smaller max_pool than the pairs when the room is short",
            spec(num_init_children=40, pairs=4),
            {"num_init_children": 40, "max_pool": 2},
        ),
        (
            "a given max_pool gives the children that fit with it",
            spec(max_pool=2),
            {"num_init_children": 46, "max_pool": 2},
        ),
        (
            "the listen queue holds the 1000 default clients: ceil(1000 / 93) = 11",
            spec(),
            {"listen_backlog_multiplier": 11, "listen_backlog": 1023},
        ),
        (
            "a small client demand keeps pgpool-II's default multiplier of 2",
            spec(client_demand=50),
            {"listen_backlog_multiplier": 2},
        ),
        (
            "the queue stops at pgpool-II's cap of 10000",
            spec(client_demand=50000),
            {"listen_backlog_multiplier": 107, "listen_backlog": 9951},
        ),
    ],
)
def test_sizing(sentence, given, expected):
    result = pgpool_tune(given)
    assert {key: result[key] for key in expected} == expected, sentence


def test_every_backend_gets_nodes_times_children_times_pool():
    result = pgpool_tune(spec([server("primary", 300), server("standby", 100)], nodes=3, pairs=2))
    # (100 - 3 - 3 x (2 + 2)) // 3 = 28 per node; max_pool 2 -> 14 children.
    assert (result["num_init_children"], result["max_pool"]) == (14, 2)
    by_name = {backend["name"]: backend for backend in result["backends"]}
    assert by_name["standby"]["connections"] == 3 * 14 * 2 == 84
    assert by_name["standby"]["worker_connections"] == 6
    assert by_name["standby"]["spare"] == 85 - 84
    assert by_name["primary"]["spare"] == 285 - 84


@pytest.mark.parametrize("nodes", [1, 2, 3, 5])
@pytest.mark.parametrize("max_connections", [30, 100, 101, 500])
@pytest.mark.parametrize("pairs", [1, 2, 4])
def test_the_sized_values_always_fit_every_backend(nodes, max_connections, pairs):
    result = pgpool_tune(spec([server("a", max_connections), server("b", 1000)], nodes=nodes, pairs=pairs))
    for backend in result["backends"]:
        assert nodes * result["num_init_children"] * result["max_pool"] <= backend["room"]
        assert backend["spare"] >= 0


def test_the_closing_margin_can_be_given():
    assert pgpool_tune(spec(closing_margin=0))["num_init_children"] == 95


def test_queueing_is_the_default_and_reserved_connections_is_noted():
    assert pgpool_tune(spec())["notes"] == []
    notes = pgpool_tune(spec(reserved_connections=1))["notes"]
    assert any("Sorry, too many clients already" in note for note in notes)


def test_a_small_somaxconn_is_noted():
    notes = pgpool_tune(spec(somaxconn=128))["notes"]
    assert any("net.core.somaxconn 128" in note for note in notes)


@pytest.mark.parametrize(
    ("sentence", "given", "message"),
    [
        (
            "a num_init_children above the room names the backend and the numbers",
            spec(num_init_children=96),
            r"num_init_children 96 x max_pool 1 = 96 connections do not fit backend db1: max_connections 100"
            r" - superuser_reserved_connections 3 .* = 93",
        ),
        (
            "the rule holds for every node",
            spec(nodes=2, num_init_children=60),
            r"2 pgpool-II node\(s\) x num_init_children 60 x max_pool 1 = 120 connections do not fit backend db1",
        ),
        (
            "a max_pool that leaves no child is refused",
            spec(max_pool=96),
            r"max_pool too large: .* max_pool 96",
        ),
        (
            "a server full of other clients leaves no room",
            spec([server(max_connections=10, other_demand=5)]),
            r"no room for pgpool-II: .* = -2",
        ),
        (
            "reserved_connections at num_init_children would refuse everyone",
            spec(num_init_children=10, reserved_connections=10),
            r"reserved_connections 10 must be below num_init_children 10",
        ),
        ("a typo in the spec is refused", spec(num_init_childern=3), r"unknown key\(s\) num_init_childern"),
        ("a backend without max_connections is refused", spec([{"name": "db1"}]), r"needs the key\(s\) max_connections"),
        ("nodes below 1 is refused", spec(nodes=0), r"nodes must be at least 1, got 0"),
        ("no backend is refused", {"nodes": 1, "backends": []}, r"backends must be a non-empty list"),
        ("cancel_headroom must be a bool", spec(cancel_headroom="yes"), r"cancel_headroom must be true or false"),
    ],
)
def test_refusals(sentence, given, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pgpool_tune(given)


# pgpool_demand: what a node opens to each backend, for the fleet plan, before the backends are sized.


@pytest.mark.parametrize(
    ("sentence", "given", "expected"),
    [
        (
            "the pool rule of thumb for 2 CPUs: 4 x 2 + 4 = 12 children of one pool, plus 2 checks and 2 closing slots",
            {"server_cpus": 2},
            {"num_init_children": 12, "max_pool": 1, "pool_connections": 12, "connections": 16, "active": 14},
        ),
        (
            "one cached connection per (user, database) pair, at most pgpool-II's default 4",
            {"server_cpus": 2, "pairs": 6},
            {"num_init_children": 12, "max_pool": 4, "pool_connections": 48, "connections": 52, "active": 14},
        ),
        (
            "given values win over the rule, and query canceling doubles the pools",
            {"num_init_children": 20, "max_pool": 2, "cancel_headroom": True, "server_cpus": 64},
            {"num_init_children": 20, "max_pool": 2, "pool_connections": 80, "connections": 84, "active": 22},
        ),
        (
            "the checks and the margin are the node's own",
            {"num_init_children": 5, "worker_connections": 0, "closing_margin": 0},
            {"num_init_children": 5, "max_pool": 1, "pool_connections": 5, "connections": 5, "active": 5},
        ),
    ],
)
def test_pgpool_demand(sentence, given, expected):
    result = pgpool_demand(given)
    assert {key: result[key] for key in expected} == expected, sentence


def test_pgpool_demand_says_where_num_init_children_came_from():
    assert pgpool_demand({"server_cpus": 4})["num_init_children_source"] == "pool rule of thumb: 4 x 4 CPUs + 4"
    assert pgpool_demand({"num_init_children": 3})["num_init_children_source"] == "given"


def test_pgpool_demand_refuses_to_guess_children_without_the_backends_cpus():
    with pytest.raises(AnsibleFilterError, match="num_init_children is not given and the backends' CPUs are unknown"):
        pgpool_demand({"pairs": 2})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"server_cpus": 2, "nodes": 2}, "unknown key"),
        ({"server_cpus": 0}, "server_cpus"),
        ({"num_init_children": 4, "cancel_headroom": "yes"}, "cancel_headroom must be true or false"),
    ],
)
def test_pgpool_demand_refuses_bad_input(given, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pgpool_demand(given)
