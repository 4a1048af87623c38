"""pgbouncer_tune: pools, processes, file descriptors and the server connections a PgBouncer host opens."""

import math

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_sizing import (
    FilterModule,
    pgbouncer_spec,
    pgbouncer_tune,
    user_shares,
)


def bouncer(databases=None, **extra):
    return {"cpus": 2, "databases": databases or [{"name": "appdb", "users": 1}], **extra}


def test_the_plugin_registers_pgbouncer_tune_and_its_spec_builder():
    assert set(FilterModule().filters()) == {"pgbouncer_tune", "pgbouncer_spec"}


@pytest.mark.parametrize(
    ("sentence", "given", "expected"),
    [
        (
            "without hints one process runs PgBouncer's defaults in transaction mode",
            bouncer(),
            {
                "pool_mode": "transaction",
                "default_pool_size": 20,
                "reserve_pool_size": 0,
                "max_db_connections": 0,
                "max_client_conn": 1000,
                "processes": 1,
                "so_reuseport": False,
                "server_connections": 20,
            },
        ),
        (
            "the rule of thumb gives 4 x 8 + 4 = 36 per pool for an 8-CPU server",
            bouncer(server_cpus=8),
            {"default_pool_size": 36, "server_connections": 36},
        ),
        (
            "the rule of thumb gives 4 x 1 + 4 = 8 per pool for a 1-CPU server",
            bouncer(server_cpus=1),
            {"default_pool_size": 8, "server_connections": 8},
        ),
        (
            "a given default_pool_size wins over the rule of thumb",
            bouncer(server_cpus=8, default_pool_size=10),
            {"default_pool_size": 10},
        ),
        (
            "every user of a database has its own pool: 3 users x (4 x 4 + 4) = 60",
            bouncer([{"name": "appdb", "users": ["app", "report", "admin"]}], server_cpus=4),
            {"default_pool_size": 20, "server_connections": 60},
        ),
        (
            "reserve pools count as server connections",
            bouncer([{"name": "appdb", "users": 2}], default_pool_size=10, reserve_pool_size=5),
            {"server_connections": 30},
        ),
        (
            "max_db_connections caps one database entry in one process",
            bouncer([{"name": "appdb", "users": 4, "max_db_connections": 25}]),
            {"server_connections": 25},
        ),
        (
            "a forced user makes one pool",
            bouncer([{"name": "reports", "user": "reporter"}], default_pool_size=5),
            {"server_connections": 5},
        ),
        (
            "an allowance shrinks the default pool until every pool fits: 2 users x 15 = 30",
            bouncer([{"name": "appdb", "users": 2}], server_cpus=16, server_connection_allowance=30),
            {"default_pool_size": 15, "max_db_connections": 30, "server_connections": 30},
        ),
        (
            "an allowance is shared by the processes: 2 processes x 2 users x 7 = 28 of 30",
            bouncer([{"name": "appdb", "users": 2}], cpus=4, processes=2, server_connection_allowance=30),
            {
                "default_pool_size": 7,
                "max_db_connections": 15,
                "server_connections": 28,
                "server_connections_per_process": 14,
            },
        ),
        (
            "pools given per database are kept and the default pool takes what is left",
            bouncer(
                [{"name": "appdb", "users": 1, "pool_size": 20}, {"name": "shop", "users": 2}],
                server_connection_allowance=30,
            ),
            {"default_pool_size": 5, "server_connections": 30},
        ),
        (
            "several processes share the port with so_reuseport",
            bouncer(cpus=4, processes=3),
            {"processes": 3, "so_reuseport": True, "server_connections": 60},
        ),
        (
            "expected_tps of 50000 asks for 3 processes at 20000 each",
            bouncer(cpus=8, expected_tps=50000),
            {"processes": 3},
        ),
        (
            "expected_tps never asks for more processes than CPUs",
            bouncer(cpus=2, expected_tps=500000),
            {"processes": 2},
        ),
        (
            "without peers (PgBouncer before 1.19) the load still gets one process",
            bouncer(cpus=8, expected_tps=50000, peers=False),
            {"processes": 1, "so_reuseport": False},
        ),
        (
            "processes given are kept without peers: the role refuses them with its variable's name",
            bouncer(cpus=4, processes=2, peers=False),
            {"processes": 2},
        ),
        (
            "idle clients alone do not add processes",
            bouncer(cpus=8, max_client_conn=20000),
            {"processes": 1, "max_client_conn": 20000},
        ),
        (
            # 1000 clients + 10 + 20 = 1030 expected; 1.1 x 1030 + 100 = 1233.
            "nofile_limit is PgBouncer's expected count plus 10% and 100",
            bouncer(),
            {"nofile_limit": 1233},
        ),
        (
            # 100 + 10 + 20 = 130, far below the usual soft limit.
            "nofile_limit never goes below 1024",
            bouncer(max_client_conn=100),
            {"nofile_limit": 1024},
        ),
        (
            # 10000 + 10 + (20 + 5) x 3 + 20 x 2 = 10125; 1.1 x 10125 = 11137.5 -> 11138; + 100 = 11238.
            "nofile_limit counts each database's pools and reserves",
            bouncer(
                [{"name": "appdb", "users": 3, "reserve_pool_size": 5}, {"name": "shop", "users": 2}],
                max_client_conn=10000,
            ),
            {"nofile_limit": 11238},
        ),
        (
            # The auth user's pool in each entry counts like one more user: (20 + 5) x (3 + 1) + 20 x (2 + 1).
            "in auth_query mode each entry's auth user pool counts in the descriptors",
            bouncer(
                [{"name": "appdb", "users": 3, "reserve_pool_size": 5}, {"name": "shop", "users": 2}],
                max_client_conn=10000,
                auth_query=True,
            ),
            {"nofile_limit": math.ceil((10000 + 10 + 25 * 4 + 20 * 3) * 1.1) + 100},
        ),
        (
            # Three entries of one user each, plus an auth pool each: 6 pools share 15 connections.
            "in auth_query mode the auth user's pools shrink the default pool to fit the allowance",
            bouncer(
                [{"name": "a", "users": ["app"]}, {"name": "b", "users": ["app"]}, {"name": "c", "users": ["app"]}],
                server_cpus=2,
                server_connection_allowance=15,
                auth_query=True,
            ),
            {"default_pool_size": 2, "server_connections": 12},
        ),
        (
            # 6 pools (3 users and 3 auth users) x (4 x 2 + 4) = 72.
            "in auth_query mode an allowance for every pool keeps the rule-of-thumb pool size",
            bouncer(
                [{"name": "a", "users": ["app"]}, {"name": "b", "users": ["app"]}, {"name": "c", "users": ["app"]}],
                server_cpus=2,
                server_connection_allowance=72,
                auth_query=True,
            ),
            {"default_pool_size": 12, "server_connections": 72},
        ),
        (
            "memory for about 2kB per connection is estimated",
            bouncer(max_client_conn=1000),
            {"estimated_memory": (1000 + 20) * 2048},
        ),
        (
            "without max_client_conn or a client demand, max_client_conn is the default of 1000",
            bouncer(),
            {"max_client_conn": 1000, "max_client_conn_source": "default", "client_demand": None, "client_capacity": 1000},
        ),
        (
            "a client demand sizes max_client_conn: 1000 + 20% = 1200 per process, and the fd limit follows",
            bouncer(client_demand=1000),
            {"max_client_conn": 1200, "max_client_conn_source": "sized", "nofile_limit": math.ceil(1230 * 1.1) + 100},
        ),
        (
            "a small client demand gets at least 10 spare and never less than PgBouncer's default of 100",
            bouncer(client_demand=30),
            {"max_client_conn": 100, "max_client_conn_source": "sized"},
        ),
        (
            "every process gets the whole sized max_client_conn, so the capacity is processes times it",
            bouncer(client_demand=500, processes=2),
            {"max_client_conn": 600, "processes": 2, "client_capacity": 1200},
        ),
        (
            "a given max_client_conn wins over the client demand",
            bouncer(client_demand=500, max_client_conn=300, processes=2),
            {"max_client_conn": 300, "max_client_conn_source": "given", "client_demand": 500, "client_capacity": 600},
        ),
    ],
)
def test_pgbouncer_tune(sentence, given, expected):
    result = pgbouncer_tune(given)
    assert {key: result[key] for key in expected} == expected, sentence


def test_databases_come_back_with_effective_sizes_and_targets_in_order():
    result = pgbouncer_tune(
        bouncer(
            [
                {"name": "appdb", "users": ["app", "report"], "target": "db1"},
                {"name": "shop", "users": 1, "target": "db2", "pool_size": 5, "pool_mode": "session"},
            ],
            cpus=4,
            processes=2,
            server_connection_allowance=60,
        )
    )
    assert result["databases"] == [
        {
            "name": "appdb",
            "target": "db1",
            "users": 2,
            "pools": 2,
            "pool_mode": "transaction",
            "pool_size": 12,
            "reserve_pool_size": 0,
            "max_db_connections": 24,
            "server_connections": 48,
        },
        {
            "name": "shop",
            "target": "db2",
            "users": 1,
            "pools": 1,
            "pool_mode": "session",
            "pool_size": 5,
            "reserve_pool_size": 0,
            "max_db_connections": 5,
            "server_connections": 10,
        },
    ]
    assert result["server_connections"] == 58


def test_session_mode_notes_that_pools_do_not_multiplex():
    result = pgbouncer_tune(bouncer(pool_mode="session", default_pool_size=10))
    assert result["notes"] == [
        (
            "appdb: session pooling does not multiplex; at most 10 clients per user are connected at once, "
            "the others wait for one to disconnect"
        )
    ]


@pytest.mark.parametrize(
    ("sentence", "given", "message"),
    [
        ("a typo in a spec key is refused", {**bouncer(), "max_clients": 10}, r"unknown key\(s\) max_clients"),
        (
            "a typo in a database key is refused",
            bouncer([{"name": "a", "users": 1, "poolsize": 5}]),
            r"databases\[0\] has unknown key\(s\) poolsize",
        ),
        ("databases are required", {"cpus": 2}, r"needs the key\(s\) databases"),
        (
            "databases must not be empty",
            bouncer(databases=[]) | {"databases": []},
            r"databases must be a non-empty list",
        ),
        (
            "users are needed without a forced user",
            bouncer([{"name": "appdb"}]),
            r"databases\[0\] \(appdb\) needs users",
        ),
        ("zero users are refused", bouncer([{"name": "appdb", "users": 0}]), r"users must be at least 1, got 0"),
        (
            "an empty user list is refused",
            bouncer([{"name": "appdb", "users": []}]),
            r"users must be a count of at least 1 or a non-empty list",
        ),
        ("auth_query must be a boolean", bouncer(auth_query="yes"), r"auth_query must be true or false, got 'yes'"),
        (
            "database names must be distinct",
            bouncer([{"name": "a", "users": 1}, {"name": "a", "users": 1}]),
            r"names must be distinct",
        ),
        (
            "an unknown pool mode is refused",
            bouncer(pool_mode="always"),
            r"pool_mode 'always' is not one of transaction, session, statement",
        ),
        ("more processes than CPUs are refused", bouncer(cpus=2, processes=3), r"processes must be at most 2, got 3"),
        ("cpus must be an integer", bouncer(cpus="many"), r"cpus must be an integer"),
        (
            "an allowance below one connection per pool is refused",
            bouncer([{"name": "appdb", "users": 5}], cpus=4, processes=2, server_connection_allowance=8),
            (
                r"server_connection_allowance 8 cannot give each of the 5 \(database, user\) pools of 2 process\(es\) one "
                r"server connection: that needs at least 10"
            ),
        ),
        (
            "given pool sizes that do not fit the allowance are not shrunk",
            bouncer([{"name": "appdb", "users": 1, "pool_size": 40}], server_connection_allowance=30),
            r"leaves 30 server connections per process, but the pools need 40 .* \(given pool sizes: appdb",
        ),
        (
            "a negative client demand is refused",
            bouncer(client_demand=-1),
            r"client_demand must be at least 0, got -1",
        ),
        (
            "too little memory for the clients is refused",
            bouncer(max_client_conn=100000, memory="64MB"),
            r"1 process\(es\) with max_client_conn 100000 need about 195.4MB, more than the memory of 64MB",
        ),
    ],
)
def test_pgbouncer_tune_refuses(sentence, given, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pgbouncer_tune(given)


@pytest.mark.parametrize(
    ("sentence", "databases", "extra", "auth_user", "expected"),
    [
        ("each named user's share is what its pool opens: pool 20 + reserve 0",
         [{"name": "appdb", "users": ["app", "report"]}], {}, None, {"app": 20, "report": 20}),
        ("a user on two entries gets both pools; reserves count",
         [{"name": "appdb", "users": ["app"]}, {"name": "reports", "users": ["app", "report"], "pool_size": 5}],
         {"reserve_pool_size": 2}, None, {"app": 22 + 7, "report": 7}),
        ("an entry's max_db_connections below its pool caps each user's share there",
         [{"name": "appdb", "users": ["app"], "max_db_connections": 8}], {}, None, {"app": 8}),
        ("the auth user runs the lookups of every entry, so it has a share of each (auth_query)",
         [{"name": "a", "users": ["app"]}, {"name": "b", "users": 3}], {"auth_query": True}, "pgbouncer_auth",
         {"app": 20, "pgbouncer_auth": 40}),
        ("a count of users names nobody", [{"name": "appdb", "users": 4}], {}, None, {}),
        ("a forced user has the entry's one pool", [{"name": "reports", "user": "reporter"}], {"default_pool_size": 5},
         None, {"reporter": 5}),
        ("an allowance that shrinks the pools shrinks the shares: 2 pools x 15 = 30",
         [{"name": "appdb", "users": ["app", "report"]}], {"server_cpus": 16, "server_connection_allowance": 30}, None,
         {"app": 15, "report": 15}),
    ],
)
def test_user_shares(sentence, databases, extra, auth_user, expected):
    sizing = pgbouncer_tune(bouncer(databases, **extra))
    assert user_shares(sizing["databases"], databases, auth_user) == expected, sentence


def test_user_shares_are_sorted_by_name():
    databases = [{"name": "appdb", "users": ["zed", "app", "mid"]}]
    assert list(user_shares(pgbouncer_tune(bouncer(databases))["databases"], databases)) == ["app", "mid", "zed"]


def test_user_shares_need_the_spec_entries_of_the_sizing():
    with pytest.raises(AnsibleFilterError, match="same entries"):
        user_shares(pgbouncer_tune(bouncer())["databases"], [])


def test_nofile_limit_covers_pgbouncer_own_count_when_many_named_users_share_entries():
    """PgBouncer counts pool_size x every known user for each entry; [users] makes each named user known."""
    databases = [{"name": f"db{n}", "users": [f"app{n}", f"report{n}"]} for n in range(5)]
    sizing = pgbouncer_tune(bouncer(databases, auth_query=True, auth_user="pgbouncer_auth"))
    pgbouncer_count = 1000 + 10 + 5 * 20 * 11  # 10 named users and the auth user
    assert sizing["nofile_limit"] == math.ceil(pgbouncer_count * 1.1) + 100


def test_without_peers_the_plan_says_why_it_runs_one_process():
    notes = pgbouncer_tune(bouncer(cpus=8, expected_tps=50000, peers=False))["notes"]
    assert notes == ["one process, although expected_tps 50000 asks for 3: this PgBouncer has no [peers] (1.19+), so with "
                     "several processes on one port a cancel request could reach a process that does not run the query"]
    assert pgbouncer_tune(bouncer(cpus=8, expected_tps=50000, peers=True))["notes"] == []
    with pytest.raises(AnsibleFilterError, match="peers must be true or false"):
        pgbouncer_tune(bouncer(peers="no"))


# pgbouncer_spec: the one builder of the role (tasks/plan.yml) and the fleet plan.
def test_the_spec_takes_the_sizing_inputs_and_leaves_the_engine_what_is_0_or_unset():
    variables = {
        "databases": [{"name": "app", "host": "db1", "port": 5433, "users": ["a", "b"], "pool_size": 5},
                      {"name": "ro", "host": "db2", "dbname": "app"}],
        "pool_mode": "transaction", "reserve_pool_size": 0, "auth_mode": "auth_query", "auth_user": "pgbouncer_auth",
        "max_client_conn": None, "server_connection_allowance": "0", "server_cpus": 4, "processes": 0,
        "expected_tps": 0, "default_pool_size": 0, "listen_port": 6432,
    }
    assert pgbouncer_spec(variables, 2, None, None, 300) == {
        "cpus": 2, "client_demand": 300, "pool_mode": "transaction", "reserve_pool_size": 0, "auth_query": True,
        "auth_user": "pgbouncer_auth", "server_cpus": 4,
        "databases": [{"name": "app", "users": ["a", "b"], "pool_size": 5}, {"name": "ro", "users": 1}],
    }
    sized = pgbouncer_tune(pgbouncer_spec(variables | {"auth_mode": "userlist"}, 2, 2**30, True))
    assert [db["pools"] for db in sized["databases"]] == [2, 1]


def test_the_spec_refuses_variables_that_are_not_a_mapping():
    with pytest.raises(AnsibleFilterError, match="variables must be a mapping"):
        pgbouncer_spec(["databases"], 2)
