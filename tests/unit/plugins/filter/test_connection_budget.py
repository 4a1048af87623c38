"""pg_connection_budget: what the whole fleet may open on each PostgreSQL server."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.connection_budget import FilterModule, pg_connection_budget
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_sizing import pgbouncer_tune


def pooler(host="app1", processes=1, **database):
    entry = {"name": "appdb", "target": "db1", "pool_size": 10, **database}
    return {"host": host, "processes": processes, "databases": [entry]}


def test_the_plugin_registers_pg_connection_budget():
    assert set(FilterModule().filters()) == {"pg_connection_budget"}


@pytest.mark.parametrize(
    ("sentence", "poolers", "clients", "expected_demand"),
    [
        ("one pool of 10 for one user is 10 connections", [pooler()], [], 10),
        ("every user has its own pool", [pooler(users=["app", "report"])], [], 20),
        ("every process has its own pools", [pooler(processes=3, users=2)], [], 60),
        ("reserve pools count", [pooler(reserve_pool_size=5, users=2)], [], 30),
        ("an entry's pools (users plus an auth user's) count when given", [pooler(users=2, pools=3)], [], 30),
        (
            "max_db_connections caps one entry per process",
            [pooler(processes=2, users=4, max_db_connections=25)],
            [],
            50,
        ),
        ("max_db_connections 0 is no cap", [pooler(users=4, max_db_connections=0)], [], 40),
        ("a forced user is one pool", [pooler(user="reporter", users=5)], [], 10),
        ("poolers on several hosts add up", [pooler("app1"), pooler("app2"), pooler("app3")], [], 30),
        ("a direct client counts its connections", [], [{"name": "cron", "target": "db1", "connections": 4}], 4),
        (
            "a direct client on several hosts counts each",
            [],
            [{"name": "cron", "target": "db1", "connections": 4, "hosts": ["c1", "c2", "c3"]}],
            12,
        ),
        (
            "instances may be a count",
            [],
            [{"name": "workers", "target": "db1", "connections": 5, "instances": 6}],
            30,
        ),
        (
            "poolers and direct clients add up",
            [pooler(users=2)],
            [{"name": "monitoring", "target": "db1", "connections": 2}],
            22,
        ),
        (
            "a pool size may come from the pooler's default_pool_size",
            [{"host": "a", "default_pool_size": 7, "databases": [{"name": "x", "target": "db1"}]}],
            [],
            7,
        ),
    ],
)
def test_demand(sentence, poolers, clients, expected_demand):
    budget = pg_connection_budget({"db1": {"ceiling": 500}}, poolers, clients)
    assert budget["db1"]["demand"] == expected_demand, sentence


def test_a_server_within_its_ceiling_is_ok_with_its_headroom():
    budget = pg_connection_budget({"db1": {"ceiling": 100, "reserved_connections": 2}}, [pooler(users=5)])
    assert budget["db1"] == {
        "demand": 50,
        "active_demand": 50,
        "required_max_connections": 55,
        "ceiling": 100,
        "headroom": 45,
        "verdict": "ok",
        "superuser_reserved_connections": 3,
        "reserved_connections": 2,
        "contributors": [
            {"name": "pgbouncer app1 (1 process) -> appdb", "kind": "pgbouncer", "connections": 50, "active": 50}
        ],
    }


def test_a_server_over_its_ceiling_is_reported_not_raised():
    budget = pg_connection_budget(
        {"db1": {"ceiling": 40}},
        [pooler("app1", processes=2, users=2)],
        [{"name": "cron", "target": "db1", "connections": 3}],
    )
    assert budget["db1"]["verdict"] == "over"
    assert budget["db1"]["headroom"] == 40 - (40 + 3 + 3)


def test_contributors_are_listed_largest_first():
    budget = pg_connection_budget(
        {"db1": {"ceiling": 500}},
        [pooler("app1"), pooler("app2", processes=2)],
        [{"name": "cron", "target": "db1", "connections": 15}],
    )
    assert budget["db1"]["contributors"] == [
        {"name": "pgbouncer app2 (2 processes) -> appdb", "kind": "pgbouncer", "connections": 20, "active": 20},
        {"name": "cron", "kind": "direct", "connections": 15, "active": 15},
        {"name": "pgbouncer app1 (1 process) -> appdb", "kind": "pgbouncer", "connections": 10, "active": 10},
    ]


def test_each_server_gets_only_its_own_demand():
    budget = pg_connection_budget(
        {"db1": {"ceiling": 100}, "db2": {"ceiling": 100}},
        [
            {
                "host": "app1",
                "databases": [
                    {"name": "a", "target": "db1", "pool_size": 10},
                    {"name": "b", "target": "db2", "pool_size": 4},
                ],
            }
        ],
    )
    assert (budget["db1"]["demand"], budget["db2"]["demand"]) == (10, 4)


def test_a_server_without_clients_needs_only_its_reserved_slots():
    budget = pg_connection_budget({"db1": {"ceiling": 100}})
    assert budget["db1"]["demand"] == 0
    assert budget["db1"]["required_max_connections"] == 3
    assert budget["db1"]["contributors"] == []


def test_a_server_may_be_given_as_a_pg_tune_spec():
    spec = {
        "memory": "16GB",
        "cpus": 4,
        "version": 17,
        "profile": "web",
        "connection_demand": 5000,
        "active_demand": 4000,
        "spare_connections": 3000,
        "reserved_connections": 2,
    }
    budget = pg_connection_budget({"db1": {"spec": spec}}, [pooler(users=2)])
    # The stale demand in the spec does not matter: only the memory ceiling is taken from it.
    # 16GB web: 8176MB / (2MB + 3 x 1MB) = 1635 processes, less 4 parallel workers = 1631.
    assert budget["db1"]["ceiling"] == 1631
    assert budget["db1"]["reserved_connections"] == 2
    assert budget["db1"]["required_max_connections"] == 25


def test_a_pgbouncer_tune_result_plus_host_is_a_pooler():
    sized = pgbouncer_tune(
        {
            "cpus": 4,
            "processes": 2,
            "server_cpus": 4,
            "databases": [{"name": "appdb", "users": ["app", "report"], "target": "db1"}],
        }
    )
    budget = pg_connection_budget({"db1": {"ceiling": 200}}, [sized | {"host": "app1"}])
    assert budget["db1"]["demand"] == sized["server_connections"] == 2 * 2 * (4 * 4 + 4)
    assert budget["db1"]["contributors"][0]["name"] == "pgbouncer app1 (2 processes) -> appdb"


def test_an_auth_query_pooler_counts_its_auth_user_pools_as_pgbouncer_tune_sized_them():
    sized = pgbouncer_tune(
        {"cpus": 2, "server_cpus": 2, "auth_query": True, "databases": [{"name": "appdb", "users": ["app"], "target": "db1"}]}
    )
    budget = pg_connection_budget({"db1": {"ceiling": 200}}, [sized | {"host": "app1"}])
    assert budget["db1"]["demand"] == sized["server_connections"] == (4 * 2 + 4) * (1 + 1)


def test_a_direct_clients_active_share_reaches_the_active_demand():
    budget = pg_connection_budget(
        {"db1": {"ceiling": 500}},
        [pooler(users=2)],
        [
            {"name": "workers", "target": "db1", "connections": 30, "active": 5, "instances": 2},
            {"name": "monitoring", "target": "db1", "connections": 3},
        ],
    )
    # Pool connections are all active; workers: 2 x 5 of their 2 x 30; monitoring: all 3 (no active given).
    assert (budget["db1"]["demand"], budget["db1"]["active_demand"]) == (20 + 60 + 3, 20 + 10 + 3)
    assert budget["db1"]["required_max_connections"] == 83 + 3
    assert budget["db1"]["contributors"] == [
        {"name": "workers (2 instances)", "kind": "direct", "connections": 60, "active": 10},
        {"name": "pgbouncer app1 (1 process) -> appdb", "kind": "pgbouncer", "connections": 20, "active": 20},
        {"name": "monitoring", "kind": "direct", "connections": 3, "active": 3},
    ]


@pytest.mark.parametrize(
    ("sentence", "servers", "poolers", "clients", "message"),
    [
        (
            "a pooler aimed at an unknown server names it and the known servers",
            {"db1": {"ceiling": 100}, "db2": {"ceiling": 100}},
            [pooler(target="db9")],
            [],
            r"pgbouncer app1 database appdb targets 'db9', which is not among the servers \(db1, db2\)",
        ),
        (
            "a direct client aimed at an unknown server names it",
            {"db1": {"ceiling": 100}},
            [],
            [{"name": "cron", "target": "dbx", "connections": 1}],
            r"direct client cron targets 'dbx', which is not among the servers \(db1\)",
        ),
        (
            "a server needs a ceiling or a spec",
            {"db1": {}},
            [],
            [],
            r"servers.db1 needs exactly one of ceiling .* or spec",
        ),
        (
            "a typo in a pooler key is refused",
            {"db1": {"ceiling": 100}},
            [{"host": "a", "proceses": 2, "databases": []}],
            [],
            r"poolers\[0\] has unknown key\(s\) proceses",
        ),
        (
            "a pool without a size is refused",
            {"db1": {"ceiling": 100}},
            [{"host": "a", "databases": [{"name": "x", "target": "db1"}]}],
            [],
            r"needs pool_size, or the pooler needs default_pool_size",
        ),
        (
            "instances and hosts together are ambiguous",
            {"db1": {"ceiling": 100}},
            [],
            [{"name": "cron", "target": "db1", "connections": 1, "instances": 2, "hosts": ["a"]}],
            r"gives both instances and hosts",
        ),
        (
            "a direct client's active share cannot exceed its connections",
            {"db1": {"ceiling": 100}},
            [],
            [{"name": "cron", "target": "db1", "connections": 4, "active": 5}],
            r"active must be at most 4, got 5",
        ),
        (
            "a negative ceiling is refused",
            {"db1": {"ceiling": -1}},
            [],
            [],
            r"servers.db1.ceiling must be at least 0, got -1",
        ),
    ],
)
def test_pg_connection_budget_refuses(sentence, servers, poolers, clients, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pg_connection_budget(servers, poolers, clients)


def test_a_pgpool_node_counts_its_connections_on_every_backend_it_fronts():
    node = {"host": "pool1", "targets": ["db1", "db2", "db1"], "connections": 16, "active": 14,
            "num_init_children": 12, "max_pool": 1, "pool_connections": 12}
    budget = pg_connection_budget({"db1": {"ceiling": 100}, "db2": {"ceiling": 100}}, [pooler()], [], [node])
    assert (budget["db1"]["demand"], budget["db1"]["active_demand"]) == (10 + 16, 10 + 14)
    assert (budget["db2"]["demand"], budget["db2"]["active_demand"]) == (16, 14)
    assert budget["db2"]["contributors"] == [
        {"name": "pgpool pool1 (num_init_children 12 x max_pool 1 + 4 checks)", "kind": "pgpool",
         "connections": 16, "active": 14}
    ]


def test_a_pgpool_node_on_an_unknown_server_is_refused():
    with pytest.raises(AnsibleFilterError, match="pgpool-II node pool1 targets 'db9'"):
        node = {"host": "pool1", "targets": ["db9"], "connections": 4, "active": 4}
        pg_connection_budget({"db1": {"ceiling": 100}}, [], [], [node])
