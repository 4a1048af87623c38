"""fleet_capacity: slots, pools and, per application, what it declared against what it holds."""

import json
import shlex

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.fleet_capacity import (
    DEFAULT_THRESHOLDS,
    FilterModule,
    capacity_declarations,
    fleet_capacity,
    fleet_capacity_lines,
)

NOW = 1_800_000_000  # the probe's time, epoch seconds
DEFAULTS = {"pgbouncer_databases": [], "pgbouncer_auth_mode": "auth_query", "pgbouncer_auth_user": "pgbouncer_auth"}


def session(pid, state="idle", app="app", seconds=5, user="app", db="appdb", client="10.0.0.9", superuser=False):
    return {"pid": pid, "state": state, "application_name": app, "state_seconds": seconds, "usename": user,
            "datname": db, "client_addr": client, "superuser": superuser}


def probe(sessions, max_connections=20, reserved=0, host=None):
    out = {"max_connections": max_connections, "superuser_reserved_connections": 3,
           "reserved_connections": reserved, "in_recovery": False, "sessions": sessions}
    return out | ({"host": host} if host else {})


def declarations(direct=None, poolers=None, groups=None):
    """capacity_declarations over a small inventory: db1 a server; pgb1, when given, a PgBouncer host."""
    hostvars = {"db1": {}, "db2": {}, **(poolers or {})}
    groups = {"postgresql": ["db1", "db2"], "pgbouncer": list(poolers or {}), **(groups or {})}
    return capacity_declarations(hostvars, groups, direct, DEFAULTS)


def capacity(sessions, direct=None, thresholds=None, **probe_args):
    return fleet_capacity({"db1": probe(sessions, **probe_args)}, {}, thresholds, declarations(direct), NOW)


def application(report, name, where="db1"):
    return next(a for a in report["applications"] if a["where"] == where and a["application_name"] == name)


def messages(report, level=None):
    return [f["message"] for f in report["flags"] if level is None or f["level"] == level]


def test_the_plugin_registers_the_capacity_filters():
    assert set(FilterModule().filters()) == {"capacity_declarations", "fleet_capacity", "fleet_capacity_lines"}


def test_free_slots_are_max_connections_minus_reserved_minus_used():
    report = capacity([session(1), session(2, "active")], reserved=2)["servers"]["db1"]
    assert (report["used"], report["free"], report["reserved"]) == (2, 20 - 5 - 2, 5)
    assert report["by_state"] == {"active": 1, "idle": 1}
    assert report["oldest_idle"]["pid"] == 1


@pytest.mark.parametrize(
    ("sentence", "used", "level"),
    [
        ("below check_postgres's 90% of 17 ordinary slots nothing is flagged", 15, None),
        ("at 90% (16 of 17 is 94%) a warning", 16, "warning"),
        ("at 95% (17 of 17) critical", 17, "critical"),
    ],
)
def test_slot_usage_follows_check_postgres_backends_defaults(sentence, used, level):
    sessions = [session(i, "active", app="web") for i in range(used)]
    report = capacity(sessions, direct=[{"name": "web", "target": "db1", "connections": 20}])
    slots = [f for f in report["flags"] if "ordinary slots" in f["message"]]
    assert [f["level"] for f in slots] == ([level] if level else []), sentence


def test_the_old_threshold_keys_still_work():
    sessions = [session(i, "active", app="web") for i in range(14)]  # 82% of 17
    report = capacity(sessions, direct=[{"name": "web", "target": "db1", "connections": 20}],
                      thresholds={"slots_share": 0.8, "idle_in_transaction_seconds": 300, "idle_per_application": 4})
    assert messages(report, "warning") == ["db1 uses 14 of its 17 ordinary slots (82%), at or above 80%"]
    assert report["thresholds"]["slots_share_critical"] == DEFAULT_THRESHOLDS["slots_share_critical"]


@pytest.mark.parametrize(
    ("thresholds", "match"),
    [
        ({"slots_share": 0.97}, "slots_share .* is above slots_share_critical"),
        ({"idle_in_transaction_seconds": "soon"}, "idle_in_transaction_seconds must be a number"),
        ({"idle_transaction": 5}, "unknown key"),
    ],
)
def test_bad_thresholds_are_refused(thresholds, match):
    with pytest.raises(AnsibleFilterError, match=match):
        capacity([], thresholds=thresholds)


def test_a_direct_client_is_matched_by_application_name_and_flagged_over_its_declaration():
    sessions = [session(1, "active", app="leaky", seconds=3)] + [
        session(10 + i, "idle", app="leaky", seconds=100 + i) for i in range(4)
    ]
    report = capacity(sessions, direct=[{"name": "leaky", "target": "db1", "connections": 1, "instances": 2}])
    leaky = application(report, "leaky")
    assert (leaky["kind"], leaky["declared"], leaky["held"], leaky["over"]) == ("direct", 2, 5, 3)
    assert (leaky["idle"], leaky["oldest_idle_seconds"], leaky["level"]) == (4, 103, "warning")
    flag = next(f for f in report["flags"] if "over its declared" in f["message"])
    assert flag["message"] == (
        "db1: application 'leaky' holds 5 connections, 3 over its declared 2; ending its 3 longest-idle session(s) "
        "frees them"
    )
    # The dry run selects exactly the 3 oldest idle sessions (idle 101 s or more), without confirmation.
    argv = shlex.split(flag["command"])
    assert argv[:4] == ["ansible-playbook", "playbooks/terminate-idle.yml", "-l", "db1"]
    assert json.loads(argv[5]) == {"headroom_terminate_states": ["idle"], "headroom_terminate_min_age": 101,
                                   "headroom_terminate_applications": ["leaky"]}
    assert "headroom_terminate_confirm" not in flag["command"]


def test_an_application_within_its_declaration_is_not_flagged():
    report = capacity([session(1, "active", app="billing"), session(2, app="billing")],
                      direct=[{"name": "billing", "target": "db1", "connections": 3}])
    assert report["flags"] == [] and application(report, "billing")["over"] == 0
    busy = capacity([session(1, "active", app="billing"), session(2, "active", app="billing")],
                    direct=[{"name": "billing", "target": "db1", "connections": 2}])
    assert busy["flags"] == []  # at its share but working: no leak


def test_an_application_at_its_enforced_share_with_idle_sessions_is_flagged():
    # Its CONNECTION LIMIT keeps a leak at the share: never over it, but all of it held, idle.
    sessions = [session(1, "active", app="leaky", user="leaky", seconds=2)] + [
        session(10 + i, app="leaky", user="leaky", seconds=60 + i) for i in range(2)]
    report = capacity(sessions, direct=[{"name": "leaky", "target": "db1", "connections": 3, "role": "leaky"}])
    flag = next(f for f in report["flags"] if f["application"] is not None)
    assert flag["level"] == "warning"
    assert flag["message"] == (
        "db1: application 'leaky' holds all 3 of its declared connections, 2 of them idle (oldest 61s): its role's "
        "CONNECTION LIMIT refuses its next login; a leak, or a pool larger than its share")
    assert json.loads(shlex.split(flag["command"])[5])["headroom_terminate_min_age"] == 60


def test_a_declared_application_without_sessions_is_listed_with_nothing_held():
    report = capacity([], direct=[{"name": "cron", "target": "db1", "connections": 3, "hosts": ["a", "b"]}])
    assert (application(report, "cron")["declared"], application(report, "cron")["held"]) == (6, 0)


def test_a_declaration_for_another_server_does_not_match():
    report = capacity([session(1, app="billing")], direct=[{"name": "billing", "target": "db2", "connections": 2}])
    assert application(report, "billing")["kind"] == "application"
    assert messages(report) == [
        "db1: application 'billing' holds 1 connections and is declared nowhere (headroom_direct_clients)"
    ]


def test_sessions_without_application_name_are_grouped_by_role_and_client_address():
    sessions = [session(1, app="", user="etl"), session(2, app="", user="etl"),
                session(3, app="", user="etl", client="10.0.0.7"), session(4, app="", user="ops", client=None)]
    report = capacity(sessions)
    unnamed = sorted((a["role"], a["client_addrs"][0], a["held"]) for a in report["applications"])
    assert unnamed == [("etl", "10.0.0.7", 1), ("etl", "10.0.0.9", 2), ("ops", "socket", 1)]
    assert "db1: sessions without application_name of role 'etl' from 10.0.0.9 holds 2 connections and is declared " \
           "nowhere (headroom_direct_clients)" in messages(report)


@pytest.mark.parametrize(
    ("sentence", "seconds", "level"),
    [
        ("pganalyze's default: below 1800 s nothing", 1799, None),
        ("from 1800 s a warning", 1800, "warning"),
        ("from 3600 s critical", 3600, "critical"),
    ],
)
def test_idle_in_transaction_follows_pganalyze_defaults(sentence, seconds, level):
    report = capacity([session(7, "idle in transaction", app="billing", seconds=seconds)],
                      direct=[{"name": "billing", "target": "db1", "connections": 2}])
    stuck = [f for f in report["flags"] if "idle in transaction" in f["message"]]
    assert [f["level"] for f in stuck] == ([level] if level else []), sentence
    if level:
        assert "pid 7" in stuck[0]["message"]
        extra = json.loads(shlex.split(stuck[0]["command"])[5])
        assert extra == {"headroom_terminate_states": ["idle in transaction", "idle in transaction (aborted)"],
                         "headroom_terminate_min_age": 1800, "headroom_terminate_applications": ["billing"]}


def test_the_dry_run_for_unnamed_superuser_sessions_names_role_and_superusers():
    report = capacity([session(3, "idle in transaction", app="", user="postgres", client=None, seconds=4000,
                               superuser=True)])
    flag = next(f for f in report["flags"] if "idle in transaction" in f["message"])
    assert flag["level"] == "critical"
    assert json.loads(shlex.split(flag["command"])[5]) == {
        "headroom_terminate_states": ["idle in transaction", "idle in transaction (aborted)"],
        "headroom_terminate_min_age": 1800, "headroom_terminate_applications": [""],
        "headroom_terminate_users": ["postgres"], "headroom_terminate_superusers": True,
    }


def test_ten_idle_connections_of_one_application_are_flagged_with_a_dry_run():
    report = capacity([session(i, app="leaky", seconds=60 + i) for i in range(10)])
    flag = next(f for f in report["flags"] if "holds 10 idle" in f["message"])
    assert flag["message"] == "db1: application 'leaky' holds 10 idle connections (a pool too large or a leak)"
    assert json.loads(shlex.split(flag["command"])[5])["headroom_terminate_min_age"] == 60


def test_an_application_over_its_declaration_on_a_full_server_is_critical():
    sessions = [session(i, app="leaky") for i in range(17)]
    report = capacity(sessions, direct=[{"name": "leaky", "target": "db1", "connections": 2}])
    over = next(f for f in report["flags"] if "over its declared" in f["message"])
    assert over["level"] == "critical"
    assert report["flags"][0]["level"] == "critical"  # critical flags come first


# PgBouncer: pgb1 fronts database appdb on db1 for users app and app_ro; shop and reports are declared on it.
POOLER = {
    "pgbouncer_databases": [{"name": "appdb", "host": "db1", "users": ["app", "app_ro"]}],
    "headroom_pgbouncer_clients": [
        {"name": "shop", "connections": 2, "instances": 2, "user": "app", "database": "appdb"},
        {"name": "reports", "connections": 1, "user": "app_ro"},
    ],
}


def client(app, user="app", state="active", addr="10.0.1.5", request_time="2027-01-15 08:00:00 UTC"):
    return {"type": "C", "user": user, "database": "appdb", "state": state, "addr": addr, "application_name": app,
            "connect_time": "2027-01-15 07:00:00 UTC", "request_time": request_time, "wait": "0", "wait_us": "0"}


def pgbouncer_probe(clients=(), servers=(), waiting=0, maxwait=0):
    return [{
        "unit": "pgbouncer.service",
        "pools": [{"database": "appdb", "user": "app", "cl_active": "2", "cl_waiting": str(waiting), "sv_active": "1",
                   "sv_idle": "2", "sv_used": "0", "sv_tested": "0", "sv_login": "0", "maxwait": str(maxwait),
                   "maxwait_us": "0"},
                  {"database": "pgbouncer", "user": "pgbouncer", "cl_waiting": "9"}],
        "databases": [{"name": "appdb", "pool_size": "4", "reserve_pool": "1", "max_connections": "0"}],
        "stats": [],
        "clients": [*clients, {"user": "pgbouncer", "database": "pgbouncer", "state": "active", "application_name": "psql"}],
        "servers": list(servers),
    }]


def pooled(clients=(), servers=(), sessions=(), direct=None, **probe_args):
    declared = declarations(direct, {"pgb1": POOLER})
    return fleet_capacity({"db1": probe(list(sessions))}, {"pgb1": pgbouncer_probe(clients, servers, **probe_args)},
                          None, declared, NOW)


def test_pgbouncer_clients_are_matched_by_application_name_then_by_user():
    clients = [client("shop")] * 3 + [client("")] * 2 + [client("psql", user="app_ro")]
    report = pooled(clients)
    shop = application(report, "shop", "pgb1")
    assert (shop["kind"], shop["declared"], shop["held"], shop["over"]) == ("pgbouncer-client", 4, 5, 1)
    # reports is the only declaration naming app_ro: its client with application_name psql is reports'.
    assert application(report, "reports", "pgb1")["held"] == 1
    assert messages(report) == [
        "pgb1: application 'shop' holds 5 PgBouncer client connections, 1 over its declared 4 (headroom_pgbouncer_clients)"
    ]


def test_a_user_two_declarations_share_does_not_pick_one():
    pooler = POOLER | {"headroom_pgbouncer_clients": [{"name": "a", "connections": 1, "user": "app"},
                                                      {"name": "b", "connections": 1, "user": "app"}]}
    declared = declarations(None, {"pgb1": pooler})
    report = fleet_capacity({}, {"pgb1": pgbouncer_probe([client("")])}, None, declared, NOW)
    unnamed = next(a for a in report["applications"] if a["kind"] == "unnamed")
    assert (unnamed["role"], unnamed["client_addrs"], unnamed["held"]) == ("app", ["10.0.1.5"], 1)


def test_a_pgbouncer_application_carries_the_waiting_clients_and_max_wait_of_its_pools():
    report = pooled([client("shop", request_time="2027-01-15 07:59:00 UTC")], waiting=2, maxwait=61)
    shop = application(report, "shop", "pgb1")
    assert (shop["clients_waiting"], shop["max_wait_seconds"]) == (2, 61.0)
    assert shop["oldest_idle_seconds"] == 60  # NOW is 2027-01-15 08:00:00 UTC
    flag = next(f for f in report["flags"] if "wait for a server connection" in f["message"])
    assert (flag["level"], flag["message"]) == (
        "critical", "pgb1: 2 client(s) of pool app@appdb (pgbouncer.service) wait for a server connection (max wait 61.000s)"
    )


def test_waiting_clients_below_the_critical_wait_are_a_warning():
    report = pooled([], waiting=1, maxwait=3)
    assert [(f["level"], f["subject"]) for f in report["flags"]] == [("warning", "pgb1")]
    assert report["poolers"]["pgb1"]["clients_waiting"] == 1


def test_server_sessions_of_pgbouncer_count_as_its_pools_not_as_undeclared_applications():
    sessions = [session(101, app="shop", user="app"), session(102, app="", user="app"),
                session(103, app="shop", user="app_ro"), session(104, app="cron", user="cron")]
    servers = [{"type": "S", "user": "app", "database": "appdb", "remote_pid": "101"}]
    report = pooled(servers=servers, sessions=sessions)
    pools = next(a for a in report["applications"] if a["where"] == "db1" and a["kind"] == "pgbouncer")
    # 101 by its PID in SHOW SERVERS, 102 and 103 by their users; cron is nobody's.
    assert (pools["application_name"], pools["held"], pools["pids"]) == ("pgb1", 3, [101, 102, 103])
    assert pools["declared"] == 5  # one pool (app@appdb): pool_size 4 + reserve_pool 1
    assert messages(report) == ["db1: application 'cron' holds 1 connections and is declared nowhere (headroom_direct_clients)"]


def test_a_declared_direct_client_wins_over_a_pgbouncer_user():
    sessions = [session(101, app="shop", user="app")]
    report = pooled(sessions=sessions, direct=[{"name": "shop", "target": "db1", "connections": 1}])
    assert application(report, "shop")["kind"] == "direct"


def test_the_pgbouncer_auth_users_sessions_are_its_pools_and_its_dry_run_says_so():
    sessions = [session(5, "idle in transaction", app="", user="pgbouncer_auth", client=None, seconds=2000)]
    report = pooled(sessions=sessions)
    flag = next(f for f in report["flags"] if "idle in transaction" in f["message"])
    extra = json.loads(shlex.split(flag["command"])[5])
    assert extra["headroom_terminate_users"] == ["pgbouncer_auth"] and extra["headroom_terminate_pgbouncer_auth"]


def test_declarations_go_through_fleet_plans_checks():
    with pytest.raises(AnsibleFilterError, match="targets 'db9'"):
        declarations([{"name": "x", "target": "db9", "connections": 1}])
    with pytest.raises(AnsibleFilterError, match="database 'nope' is not one of"):
        declarations(None, {"pgb1": POOLER | {"headroom_pgbouncer_clients": [{"name": "x", "connections": 1,
                                                                              "database": "nope"}]}})


def test_the_console_lines_give_level_message_and_dry_run():
    report = capacity([session(i, app="leaky", seconds=30) for i in range(3)],
                      direct=[{"name": "leaky", "target": "db1", "connections": 1}])
    lines = fleet_capacity_lines(report)
    assert lines[0] == ("WARNING: db1: application 'leaky' holds 3 connections, 2 over its declared 1; ending its 2 "
                        "longest-idle session(s) frees them")
    assert lines[1].startswith("  free them (dry run): ansible-playbook playbooks/terminate-idle.yml -l db1 -e ")
    assert fleet_capacity_lines(capacity([]))[0].startswith("No flags")


def test_a_host_with_two_clusters_matches_declarations_by_its_inventory_hostname():
    report = fleet_capacity({"db1:15/main": probe([session(1, app="leaky"), session(2, app="leaky")], host="db1")},
                            {}, None, declarations([{"name": "leaky", "target": "db1", "connections": 1}]), NOW)
    leaky = application(report, "leaky", "db1:15/main")
    assert (leaky["over"], shlex.split(report["flags"][0]["command"])[3]) == (1, "db1")


def test_pools_and_direct_clients_of_a_server_outside_the_inventory_are_declared_and_its_pgbouncer_side_still_read():
    external = {"orders-rds": {"address": "orders.example", "max_connections": 100, "cpus": 2}}
    pooler = POOLER | {"pgbouncer_databases": [{"name": "appdb", "host": "orders-rds", "users": ["app"]}]}
    hostvars = {"db1": {}, "pgb1": pooler}
    declared = capacity_declarations(hostvars, {"postgresql": ["db1"], "pgbouncer": ["pgb1"]},
                                     [{"name": "cron", "target": "orders-rds", "connections": 2}], DEFAULTS, external)
    assert declared["poolers"]["pgb1"]["databases"] == {"appdb": "orders-rds"}
    assert declared["direct"][0]["target"] == "orders-rds"
    # Nothing probes the server itself: the PgBouncer host's clients are still matched.
    report = fleet_capacity({"db1": probe([])}, {"pgb1": pgbouncer_probe([client("shop")] * 5)}, None, declared, NOW)
    assert application(report, "shop", "pgb1")["held"] == 5


# pgpool-II nodes (group pgpool): what psql --csv prints for SHOW pool_pools (pgpool-II 4.3's
# columns, as Debian 12 ships it; the ones read here keep their names in 4.4+): 3 children of
# max_pool 1 in front of db1 and db2, two of them with cached connections.
PGPOOL_POOLS = (
    "pool_pid,start_time,client_connection_count,pool_id,backend_id,database,username,backend_connection_time,"
    "client_connection_time,client_disconnection_time,client_idle_duration,majorversion,minorversion,pool_counter,"
    "pool_backendpid,pool_connected,status\n"
    "900,t,1,0,0,appdb,app,t,t,t,0,3,0,1,101,0,Wait for connection\n"
    "900,t,1,0,1,appdb,app,t,t,t,0,3,0,1,201,0,Wait for connection\n"
    "901,t,1,0,0,appdb,app,t,t,t,0,3,0,1,102,0,Wait for connection\n"
    "901,t,1,0,1,,,,,,0,0,0,0,0,0,Wait for connection\n"
    "902,t,0,0,0,,,,,,0,0,0,0,0,0,Wait for connection\n"
    "902,t,0,0,1,,,,,,0,0,0,0,0,0,Wait for connection\n"
)


def pgpool_capacity(sessions):
    hostvars = {"db1": {}, "db2": {}, "pool1": {"pgpool_backends": [{"host": "db1"}, {"host": "db2"}]}}
    groups = {"postgresql": ["db1", "db2"], "pgbouncer": [], "pgpool": ["pool1"]}
    declared = capacity_declarations(hostvars, groups, None, {"pgpool_health_check_user": "pgpool_check"})
    return fleet_capacity({"db1": probe(sessions)}, {}, None, declared, NOW,
                          {"pool1": {"pools": PGPOOL_POOLS}})


def test_a_pgpool_nodes_cached_connections_and_checks_are_its_own_against_what_the_budget_counts():
    sessions = [session(101, app="shop"), session(102, app=""), session(103, app="", user="pgpool_check", db="postgres"),
                session(104, app="shop")]
    report = pgpool_capacity(sessions)
    node = application(report, "pool1")
    # Children's PIDs 101 and 102, and the health check user's 103; 104 is nobody's.
    assert (node["kind"], node["held"], node["pids"]) == ("pgpool", 3, [101, 102, 103])
    assert node["declared"] == 3 * 1 + 2 + 2  # num_init_children x max_pool + checks + closing margin
    assert application(report, "shop")["pids"] == [104]
    assert report["pgpool"]["pool1"] == {
        "num_init_children": 3, "max_pool": 1, "declared_per_backend": 7,
        "backends": [{"target": "db1", "cached_connections": 2}, {"target": "db2", "cached_connections": 1}],
    }


def test_a_pgpool_node_over_what_the_budget_counts_is_flagged():
    sessions = [session(101), session(102)] + [session(300 + n, app="", user="pgpool_check", db="postgres")
                                               for n in range(6)]
    report = pgpool_capacity(sessions)
    assert "db1: pgpool-II pool1's children and checks holds 8 connections, 1 over its declared 7" in messages(report)[0]
