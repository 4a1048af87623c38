"""fleet_plan: the fleet's budget, resources and standby parity, from inventory variables."""

import json
import math
import time
from collections.abc import Mapping

import pytest
from ansible.errors import AnsibleFilterError
from ansible.plugins.filter.core import to_nice_json
from ansible_collections.headroom.pg.plugins.filter.fleet_plan import (
    FilterModule,
    fleet_plan,
    fleet_plan_lines,
    fleet_plan_markdown,
    fleet_plan_report,
)
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_sizing import pgbouncer_tune
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_sizing import max_connections_report, tune

# The role defaults fleet_plan falls back to, as roles/*/defaults/main.yml give them.
DEFAULTS = {
    "postgresql_tuning_profile": "mixed",
    "postgresql_tuning_storage": "ssd",
    "postgresql_tuning_memory_fraction": 1.0,
    "postgresql_tuning_reserved_memory": 0,
    "postgresql_tuning_overrides": {},
    "postgresql_tuning_max_connections": None,
    "postgresql_tuning_clusters": [],
    "postgresql_version": "",
    "pgbouncer_databases": [],
    "pgbouncer_pool_mode": "transaction",
    "pgbouncer_max_client_conn": 1000,
    "pgbouncer_server_connection_allowance": 0,
    "pgbouncer_server_cpus": 0,
    "pgbouncer_default_pool_size": 0,
    "pgbouncer_reserve_pool_size": 0,
    "pgbouncer_processes": 0,
    "pgbouncer_expected_tps": 0,
}


def server(memory="4GB", cpus=2, version=15, **extra):
    return {"headroom_memory": memory, "headroom_cpus": cpus, "headroom_postgresql_version": version, **extra}


def bouncer(*databases, cpus=2, **extra):
    return {"headroom_cpus": cpus, "headroom_memory": "1GB", "pgbouncer_databases": list(databases), **extra}


def plan(hostvars, clients=None, groups=None):
    groups = groups or {
        "postgresql": [h for h, v in hostvars.items() if "headroom_postgresql_version" in v or "connection_budget_resources" in v],
        "pgbouncer": [h for h, v in hostvars.items() if "pgbouncer_databases" in v],
    }
    return fleet_plan(hostvars, groups, clients, DEFAULTS)


def test_the_plugin_registers_fleet_plan():
    assert set(FilterModule().filters()) == {
        "fleet_plan",
        "fleet_plan_lines",
        "fleet_plan_markdown",
        "fleet_plan_report",
    }


def test_demand_adds_up_pools_of_every_pgbouncer_host_and_direct_clients():
    result = plan(
        {
            "db1": server(),
            "app1": bouncer({"name": "app", "host": "db1", "users": ["a", "b"], "pool_size": 4}),
            "app2": bouncer({"name": "app", "host": "db1", "users": 1, "pool_size": 6}, pgbouncer_processes=2),
            "web1": {},
            "web2": {},
        },
        clients=[
            {"name": "monitoring", "target": "db1", "connections": 5},
            {"name": "web pool", "target": "db1", "connections": 10, "group": "web"},
        ],
        groups={"postgresql": ["db1"], "pgbouncer": ["app1", "app2"], "web": ["web1", "web2"]},
    )
    db1 = result["servers"]["db1"]
    assert db1["demand"] == 2 * 4 + 2 * 6 + 5 + 2 * 10 == 45
    # 45 + 3 reserved + 10 spare (20% of 45 is 9).
    assert (db1["max_connections"], db1["spare_connections"]) == (45 + 3 + 10, 10)
    assert db1["tuning_active_demand"] == 45  # every pool connection, and the direct clients gave no "active"
    assert db1["settings"] == tune(
        {"memory": "4GB", "cpus": 2, "version": 15, "connection_demand": db1["demand"], "active_demand": 45}
    )
    assert result["ok"] and result["problems"] == []


def test_a_direct_clients_active_share_reaches_the_tuning_of_its_server():
    result = plan(
        {"db1": server(), "app1": bouncer({"name": "app", "host": "db1", "users": 1, "pool_size": 10})},
        clients=[{"name": "workers", "target": "db1", "connections": 40, "active": 4, "instances": 2}],
    )
    db1 = result["servers"]["db1"]
    # demand 10 + 2 x 40 = 90, of which 10 + 2 x 4 = 18 run at once; 90 + 3 + 18 spare = 111.
    assert (db1["demand"], db1["active_demand"], db1["tuning_demand"], db1["tuning_active_demand"]) == (90, 18, 90, 18)
    assert db1["max_connections"] == 111
    assert db1["settings"] == tune(
        {"memory": "4GB", "cpus": 2, "version": 15, "connection_demand": 90, "active_demand": 18}
    )
    # 4GB mixed: 2032MB - (111 + 2 workers) x 2MB = 1806MB; 111 - 72 idle = 39 active:
    # 1806MB / ((39 + 2) x 6) = 7517kB, where all 111 active would get 1806MB / ((111 + 2) x 6) = 2727kB.
    assert db1["settings"]["work_mem"] == "7517kB"
    # 18 at once is within the advice of 2 x (4 x 2 + 4) = 24: no warning, though 90 may connect.
    assert (db1["advice"], db1["warnings"], result["warnings"]) == (24, [], [])


@pytest.mark.parametrize(("version", "reserved", "demand"), [(16, 2, 10), (15, 0, 12)])
def test_operations_clients_take_reserved_slots_from_postgresql_16(version, reserved, demand):
    result = plan(
        {"db1": server(version=version), "app1": bouncer({"name": "app", "host": "db1", "users": 1, "pool_size": 10})},
        clients=[{"name": "exporter", "target": "db1", "connections": 2, "reserved": True, "role": "monitor"}],
    )
    db1 = result["servers"]["db1"]
    # 16+: the exporter's 2 are reserved_connections, granted to its role; 15: ordinary demand.
    assert (db1["demand"], db1["reserved_connections"], db1["tuning_reserved_connections"]) == (demand, reserved, reserved)
    assert db1["reserved_roles"] == (["monitor"] if version >= 16 else [])
    # demand + 3 superuser + reserved + 10 spare
    assert db1["max_connections"] == demand + 3 + reserved + 10
    assert db1["settings"].get("reserved_connections", 0) == reserved


def test_reserved_must_be_a_boolean():
    with pytest.raises(AnsibleFilterError, match="reserved must be true or false"):
        plan({"db1": server()}, clients=[{"name": "x", "target": "db1", "connections": 1, "reserved": "yes"}])


def test_a_pgbouncer_without_pool_sizes_gets_the_rule_of_thumb_from_its_server_cpus():
    result = plan({"db1": server(cpus=4), "app1": bouncer({"name": "app", "host": "db1", "users": 1})})
    assert result["poolers"]["app1"]["server_cpus"] == 4
    assert result["poolers"]["app1"]["sizing"]["databases"][0]["pool_size"] == 4 * 4 + 4
    assert result["servers"]["db1"]["demand"] == 20


def test_the_allowance_given_to_a_pgbouncer_host_reproduces_its_pools():
    result = plan(
        {"db1": server(), "app1": bouncer({"name": "app", "host": "db1", "users": 3}, pgbouncer_reserve_pool_size=2)}
    )
    pooler = result["poolers"]["app1"]
    again = pgbouncer_tune(
        {
            "cpus": 2,
            "server_cpus": pooler["server_cpus"],
            "reserve_pool_size": 2,
            "server_connection_allowance": pooler["server_connection_allowance"],
            "databases": [{"name": "app", "users": 3}],
        }
    )
    assert again["server_connections"] == pooler["server_connection_allowance"] == 3 * ((4 * 2 + 4) + 2)
    assert again["databases"][0]["pool_size"] == pooler["sizing"]["databases"][0]["pool_size"]


def test_in_auth_query_mode_the_allowance_counts_the_auth_user_pools_the_role_will_open():
    # Three databases behind a PgBouncer on the server itself, in auth_query mode: each entry has
    # the auth user's pool beside the users', and the role sizes them so (roles/pgbouncer/tasks/plan.yml).
    databases = [{"name": name, "users": ["bench"]} for name in ("bench1", "bench10", "bench100")]
    result = plan({"db1": server() | bouncer(*databases, pgbouncer_auth_mode="auth_query")})
    pooler = result["poolers"]["db1"]
    again = pgbouncer_tune(
        {
            "cpus": 2,
            "server_cpus": pooler["server_cpus"],
            "auth_query": True,
            "server_connection_allowance": pooler["server_connection_allowance"],
            "databases": databases,
        }
    )
    assert again["default_pool_size"] == pooler["sizing"]["default_pool_size"] == 4 * 2 + 4
    assert pooler["server_connection_allowance"] == result["servers"]["db1"]["demand"] == 3 * 12 * (1 + 1)


@pytest.mark.parametrize(
    ("sentence", "host", "expected_target"),
    [
        ("an inventory hostname is that server", "db2", "db2"),
        ("an address that is a server's ansible_host is that server", "10.0.0.2", "db2"),
        ("a socket directory is the PgBouncer host's own server", "/var/run/postgresql", "db1"),
        ("no host at all is the PgBouncer host's own server", None, "db1"),
    ],
)
def test_targets_resolve_to_inventory_servers(sentence, host, expected_target):
    database = {"name": "app", "users": 1, "pool_size": 7} | ({"host": host} if host else {})
    result = plan(
        {
            "db1": server(pgbouncer_databases=[database]),
            "db2": server(ansible_host="10.0.0.2"),
        },
        groups={"postgresql": ["db1", "db2"], "pgbouncer": ["db1"]},
    )
    assert result["servers"][expected_target]["demand"] == 7, sentence


def test_an_unknown_target_fails_naming_the_host_the_entry_and_the_servers():
    with pytest.raises(AnsibleFilterError, match=r"app1: pgbouncer_databases\[0\] \(app\) has host 'db9'.*db1"):
        plan({"db1": server(), "app1": bouncer({"name": "app", "host": "db9", "users": 1})})


def test_a_direct_client_on_an_unknown_server_fails_naming_the_variable():
    with pytest.raises(AnsibleFilterError, match=r"headroom_direct_clients\[0\] \(cron\) targets 'db9'"):
        plan({"db1": server()}, clients=[{"name": "cron", "target": "db9", "connections": 2}])


@pytest.mark.parametrize(
    ("client", "message"),
    [
        ({"name": "x", "target": "db1", "connections": 2, "size": 3}, "unknown key"),
        ({"name": "x", "target": "db1"}, "needs connections"),
        ({"name": "x", "target": "db1", "connections": 2, "group": "nope"}, "group 'nope'"),
        ({"name": "x", "target": "db1", "connections": 2, "instances": 2, "hosts": ["a"]}, "more than one"),
        ({"name": "x", "target": "db1", "connections": -1}, "at least 0"),
    ],
)
def test_bad_direct_clients_fail_with_what_is_allowed(client, message):
    with pytest.raises(AnsibleFilterError, match=message):
        plan({"db1": server()}, clients=[client])


def test_a_server_without_known_memory_fails_naming_the_variable_to_set():
    with pytest.raises(AnsibleFilterError, match=r"server db1: its memory is unknown.*headroom_memory"):
        plan({"db1": {"headroom_cpus": 2, "headroom_postgresql_version": 15}}, groups={"postgresql": ["db1"]})


def test_measured_resources_win_over_inventory_and_facts_over_nothing():
    result = plan(
        {
            "db1": server(memory="64GB", connection_budget_resources={"memory": 2 * 1024**3, "cpus": 2, "version": 15}),
            "db2": {"ansible_facts": {"memtotal_mb": 8192, "processor_nproc": 4, "distribution": "Debian",
                                      "distribution_major_version": "13"}},
        },
        groups={"postgresql": ["db1", "db2"]},
    )
    db1, db2 = result["servers"]["db1"]["resources"], result["servers"]["db2"]["resources"]
    assert (db1["memory"], db1["memory_source"]) == (2 * 1024**3, "measured")
    assert (db2["memory"], db2["cpus"], db2["version"]) == (8 * 1024**3, 4, 17)
    assert (db2["memory_source"], db2["version_source"]) == ("facts", "distribution")


def test_a_server_over_its_ceiling_is_a_problem_naming_demand_ceiling_contributors_and_fixes():
    ceiling = max_connections_report({"memory": "1GB", "cpus": 1, "version": 15})["ceiling"]
    result = plan(
        {
            "db1": server(memory="1GB", cpus=1),
            "app1": bouncer({"name": "app", "host": "db1", "users": 4, "pool_size": 20}),
        },
        clients=[{"name": "backup", "target": "db1", "connections": 2}],
    )
    db1 = result["servers"]["db1"]
    assert not result["ok"]
    assert db1["verdict"] == "over" and db1["settings"] is None
    (problem,) = result["problems"]
    assert "may open 82 connections (+ 3 reserved = 85)" in problem
    assert f"allow at most {ceiling}" in problem
    assert "pgbouncer app1 (1 process) -> app 80; backup 2" in problem
    assert "smaller pools" in problem and "transaction pooling" in problem and "more memory" in problem


def test_a_standby_runs_at_least_its_primarys_parity_settings():
    result = plan(
        {
            "db1": server(memory="4GB", cpus=4, postgresql_tuning_overrides={"max_locks_per_transaction": 128}),
            # desktop's default of 20 connections is below the primary's 20 + 3 + 10 spare = 33: parity must raise it
            "db2": server(memory="4GB", cpus=2, postgresql_primary="db1", postgresql_tuning_profile="desktop"),
            "app1": bouncer({"name": "app", "host": "db1", "users": 2, "pool_size": 10}),
        }
    )
    primary, standby = result["servers"]["db1"], result["servers"]["db2"]
    assert primary["max_connections"] == 33 and standby["demand"] == 0
    assert standby["max_connections"] == 33
    assert standby["tuning_max_connections"] == 33
    assert standby["parity_overrides"] == {"max_locks_per_transaction": 128}
    assert standby["settings"]["max_locks_per_transaction"] == 128
    assert {p["setting"] for p in standby["parity"]} == {"max_connections", "max_locks_per_transaction"}
    assert primary["standbys"] == ["db2"]


def test_a_standby_with_higher_values_keeps_them():
    result = plan({"db1": server(), "db2": server(memory="8GB", cpus=16, postgresql_primary="db1")})
    assert "max_worker_processes" not in {p["setting"] for p in result["servers"]["db2"]["parity"]}
    assert result["servers"]["db2"]["settings"]["max_worker_processes"] == 16


def test_a_standby_too_small_for_its_primarys_max_connections_is_a_problem():
    result = plan(
        {
            "db1": server(memory="16GB"),
            "db2": server(memory="1GB", postgresql_primary="db1"),
            "app1": bouncer({"name": "app", "host": "db1", "users": 10, "pool_size": 20}),
        }
    )
    # 200 + 3 + 40 spare (20% of 200) = 243 on db1; db2's 1GB carries only 61 (mixed: 63 processes of 8MB, less 2).
    assert result["servers"]["db1"]["settings"]["max_connections"] == 243
    (problem,) = result["problems"]
    assert "standby parity: db2 must run at least its primary db1's max_connections 243" in problem


@pytest.mark.parametrize(
    ("primaries", "message"),
    [
        ({"db1": "db9"}, r"server db1: postgresql_primary 'db9' must be another host of group postgresql"),
        ({"db1": "db1"}, r"must be another host"),
        ({"db1": "db2", "db2": "db1"}, r"cycle: db1 -> db2 -> db1"),
    ],
)
def test_bad_primaries_fail(primaries, message):
    hostvars = {name: server(postgresql_primary=primaries.get(name)) for name in ("db1", "db2")}
    with pytest.raises(AnsibleFilterError, match=message):
        plan(hostvars)


def test_a_cascading_standby_follows_its_upstream_standby():
    result = plan(
        {
            "db1": server(cpus=12),
            "db2": server(postgresql_primary="db1"),
            "db3": server(postgresql_primary="db2"),
        }
    )
    assert result["servers"]["db3"]["settings"]["max_worker_processes"] == 12


def test_ten_thousand_servers_plan_in_seconds():
    hostvars = {f"db{i}": server(memory=f"{4 + i % 4}GB") for i in range(8000)}
    hostvars |= {
        f"app{i}": bouncer(*({"name": f"app{k}", "host": f"db{i * 4 + k}", "users": 2} for k in range(4)))
        for i in range(2000)
    }
    started = time.monotonic()
    result = plan(hostvars)
    assert time.monotonic() - started < 40  # about 2 s on an idle 2-core machine (1.7 s measured)
    assert result["ok"] and len(result["servers"]) == 8000
    assert result["servers"]["db7999"]["demand"] == 2 * (4 * 2 + 4)


def test_the_markdown_and_the_console_lines_carry_every_server_and_problem():
    result = plan(
        {
            "db1": server(memory="1GB", cpus=1),
            "db2": server(),
            "app1": bouncer({"name": "app", "host": "db1", "users": 4, "pool_size": 20}),
        }
    )
    markdown, lines = fleet_plan_markdown(result), fleet_plan_lines(result)
    # db2 has no declared clients: its demand is unknown, so it runs the profile's default.
    db2_max_connections = result["servers"]["db2"]["max_connections"]
    assert db2_max_connections > 4
    # No spare without a demand; the advice is 2 x (4 x 2 + 4) = 24.
    assert f"| db2 |  | 4GB (inventory) | 2 | 15 | 0 |  | {db2_max_connections} |" in markdown
    assert f"| {db2_max_connections} | {result['servers']['db2']['ceiling']} | 24 |" in markdown
    assert "**1 problem(s)" in markdown and "db1 is over its connection ceiling" in markdown
    assert lines[0].startswith("db1: 1GB (inventory), 1 CPUs, PostgreSQL 15; demand 80") and "PROBLEM" in lines[0]
    assert lines[1].startswith("db2: 4GB (inventory)") and f"max_connections {db2_max_connections}," in lines[1]


def test_the_markdown_and_the_console_lines_carry_spare_advice_and_warnings():
    result = plan(
        {
            "db1": server(),
            "db2": server(memory="1GB"),
            "app1": bouncer(
                {"name": "app", "host": "db1", "users": 3, "pool_size": 10},
                {"name": "shop", "host": "db2", "users": 5, "pool_size": 11},
            ),
        }
    )
    db1, db2 = result["servers"]["db1"], result["servers"]["db2"]
    # db1, 4GB mixed, 2 CPUs: ceiling 2032MB / 8MB = 254 less 2 workers = 252; 30 + 3 + 10 spare = 43.
    assert (db1["max_connections"], db1["spare_connections"], db1["ceiling"], db1["advice"]) == (43, 10, 252, 24)
    # db2, 1GB: ceiling 61; 55 + 3 = 58 leaves 3 of the 11 spare (20% of 55).
    assert (db2["max_connections"], db2["spare_connections"], db2["ceiling"]) == (61, 3, 61)
    # Both demands exceed the advice of 24 at once; db2's spare was trimmed too. Warnings are no problems.
    assert [len(db1["warnings"]), len(db2["warnings"])] == [1, 2]
    assert result["warnings"] == db1["warnings"] + db2["warnings"]
    assert result["ok"] and result["problems"] == []
    assert db1["warnings"][0].startswith("db1: 30 connections may run queries at once, more than the 24")
    assert db2["warnings"][0].startswith("db2: only 3 spare slots fit above connection_demand 55")

    markdown, lines = fleet_plan_markdown(result), fleet_plan_lines(result)
    assert (
        "| server | primary | memory (source) | CPUs | version | demand | spare | max_connections | ceiling | advice | "
        "headroom | verdict |"
    ) in markdown
    assert "| db1 |  | 4GB (inventory) | 2 | 15 | 30 | 10 | 43 | 252 | 24 | 209 | ok |" in markdown
    assert "| db2 |  | 1GB (inventory) | 2 | 15 | 55 | 3 | 61 | 61 | 24 | 0 | ok |" in markdown
    assert "3 warning(s):" in markdown
    assert all(f"- {warning}" in markdown for warning in result["warnings"])
    assert "max_connections 43 (10 spare), ceiling 252, headroom 209" in lines[0]
    assert lines[1] == f"  warning: {db1['warnings'][0]}"
    assert "max_connections 61 (3 spare), ceiling 61, headroom 0" in lines[2]
    assert lines[3:5] == [f"  warning: {warning}" for warning in db2["warnings"]]
    assert lines[5].startswith("app1 (PgBouncer): clients: none declared") and len(lines) == 6


def test_a_plan_without_warnings_lists_none():
    result = plan({"db1": server(), "app1": bouncer({"name": "app", "host": "db1", "users": 1, "pool_size": 10})})
    assert result["warnings"] == [] and result["servers"]["db1"]["warnings"] == []
    assert "warning" not in fleet_plan_markdown(result)
    assert not any("warning" in line for line in fleet_plan_lines(result))


class CountingVariables(Mapping):
    """A host's variables as Ansible's hostvars gives them: counts every lookup of a value."""

    def __init__(self, variables, lookups):
        self._variables, self._lookups = variables, lookups

    def __getitem__(self, name):
        self._lookups[name] = self._lookups.get(name, 0) + 1
        return self._variables[name]

    def __contains__(self, name):  # as HostVarsVars: no templating to answer it
        return name in self._variables

    def __iter__(self):
        return iter(self._variables)

    def __len__(self):
        return len(self._variables)


class CountingHostvars(Mapping):
    """hostvars that counts how often each host's variables are built."""

    def __init__(self, hostvars):
        self._hostvars, self.built, self.lookups = hostvars, {}, {}

    def __getitem__(self, host):
        self.built[host] = self.built.get(host, 0) + 1
        return CountingVariables(self._hostvars[host], self.lookups.setdefault(host, {}))

    def __iter__(self):
        return iter(self._hostvars)

    def __len__(self):
        return len(self._hostvars)


def test_each_hosts_variables_are_built_once_and_each_value_read_once():
    hostvars = CountingHostvars(
        {
            "db1": server(
                postgresql_tuning_overrides={"max_wal_senders": 12},
                pgbouncer_databases=[{"name": "local", "host": "/var/run/postgresql", "users": 1, "pool_size": 2}],
            ),
            "db2": server(postgresql_primary="db1", ansible_host="10.0.0.2"),
            "app1": bouncer({"name": "app", "host": "db1", "users": 2}, pgbouncer_processes=2),
            "web1": server(),  # in no group the plan reads
        }
    )
    fleet_plan(hostvars, {"postgresql": ["db1", "db2"], "pgbouncer": ["app1", "db1"]}, [], DEFAULTS)
    assert hostvars.built == {"db1": 1, "db2": 1, "app1": 1}
    assert all(count == 1 for lookups in hostvars.lookups.values() for count in lookups.values())
    assert hostvars.lookups["app1"]["pgbouncer_processes"] == 1
    assert "pgbouncer_databases" not in hostvars.lookups["db2"]  # a server only: no PgBouncer variables read


def test_the_plan_is_plain_data_whatever_mappings_the_inventory_gives():
    result = plan(
        {
            "db1": server(postgresql_tuning_overrides=CountingVariables({"max_wal_senders": 12}, {})),
            "app1": bouncer(CountingVariables({"name": "app", "host": "db1", "users": ("a", "b")}, {})),
        }
    )

    def kinds(value):
        if isinstance(value, dict):
            return {type(value)} | {kind for item in value.values() for kind in kinds(item)}
        if isinstance(value, list):
            return {type(value)} | {kind for item in value for kind in kinds(item)}
        return {type(value)}

    assert kinds(result) <= {dict, list, str, int, float, bool, type(None)}
    assert result["servers"]["db1"]["tuning_overrides"] == {"max_wal_senders": 12}


@pytest.mark.parametrize("over", [False, True], ids=["fits", "a server over its ceiling"])
def test_the_report_is_what_plan_yml_wrote_from_the_plan(over):
    hostvars = {
        "db1": server(memory="1GB" if over else "4GB"),
        "db2": server(postgresql_primary="db1"),
        # 6 x 20 = 120: + 3 reserved is over 1GB's ceiling of 61, within 4GB's of 252 with its 24 spare.
        "app1": bouncer({"name": "app", "host": "db1", "users": 6, "pool_size": 20}),
    }
    groups = {"postgresql": ["db1", "db2"], "pgbouncer": ["app1"]}
    expected = fleet_plan(hostvars, groups, [], DEFAULTS)
    report = fleet_plan_report(hostvars, groups, [], DEFAULTS)
    assert report["json"] == to_nice_json(expected, sort_keys=True) + "\n"
    assert json.loads(report["json"]) == expected
    assert report["markdown"] == fleet_plan_markdown(expected)
    assert report["lines"] == fleet_plan_lines(expected)
    assert report["problems"] == expected["problems"]
    assert report["warnings"] == expected["warnings"]
    assert bool(report["problems"]) == over


# The client side: applications declared on a PgBouncer host against max_client_conn x processes.
POOL = {"name": "app", "host": "db1", "users": 1, "pool_size": 10}
WEB = {"name": "web", "connections": 10, "instances": 6}
CRON = {"name": "cron", "connections": 5, "group": "cron"}


def client_plan(**pooler):
    return plan(
        {"db1": server(), "app1": bouncer(POOL, cpus=4, **pooler), "c1": {}, "c2": {}},
        groups={"postgresql": ["db1"], "pgbouncer": ["app1"], "cron": ["c1", "c2"]},
    )


@pytest.mark.parametrize(
    ("sentence", "pooler", "expected"),
    [
        (
            "without declared clients the demand is unknown and max_client_conn keeps its default of 1000",
            {},
            {"demand": None, "applications": [], "max_client_conn": 1000, "max_client_conn_source": "default",
             "processes": 1, "capacity": 1000, "verdict": "undeclared"},
        ),
        (
            "the demand adds up each application's connections x instances: 10 x 6 + 5 x 2 (group cron) = 70",
            {"headroom_pgbouncer_clients": [WEB, CRON]},
            {"demand": 70, "applications": [
                {"name": "web", "connections": 10, "instances": 6, "client_connections": 60, "user": None,
                 "database": None},
                {"name": "cron", "connections": 5, "instances": 2, "client_connections": 10, "user": None,
                 "database": None},
            ], "verdict": "ok"},
        ),
        (
            "hosts count instances as for direct clients, as a list or a count",
            {"headroom_pgbouncer_clients": [{"name": "a", "connections": 4, "hosts": ["x", "y"]},
                                            {"name": "b", "connections": 3, "hosts": 3}]},
            {"demand": 17},
        ),
        (
            "unset, max_client_conn is sized: 70 + max(10, 20% of 70 = 14) = 84, raised to the floor of 100",
            {"headroom_pgbouncer_clients": [WEB, CRON]},
            {"max_client_conn": 100, "max_client_conn_source": "sized", "capacity": 100},
        ),
        (
            "unset, a large demand gets 20% spare: 1000 + 200 = 1200",
            {"headroom_pgbouncer_clients": [{"name": "web", "connections": 20, "instances": 50}]},
            {"demand": 1000, "max_client_conn": 1200, "max_client_conn_source": "sized", "verdict": "ok"},
        ),
        (
            "the operator's max_client_conn is kept when the clients fit it",
            {"headroom_pgbouncer_clients": [WEB], "pgbouncer_max_client_conn": 64},
            {"demand": 60, "max_client_conn": 64, "max_client_conn_source": "given", "capacity": 64, "verdict": "ok"},
        ),
        (
            "each of several processes gets the whole sized max_client_conn: the kernel hashes connections",
            {"headroom_pgbouncer_clients": [{"name": "web", "connections": 20, "instances": 50}],
             "pgbouncer_processes": 3},
            {"max_client_conn": 1200, "processes": 3, "capacity": 3600, "verdict": "ok"},
        ),
        (
            "with several processes a given max_client_conn counts once per process: 3 x 25 = 75 holds 70",
            {"headroom_pgbouncer_clients": [WEB, CRON], "pgbouncer_max_client_conn": 25, "pgbouncer_processes": 3},
            {"max_client_conn": 25, "processes": 3, "capacity": 75, "verdict": "ok"},
        ),
    ],
)
def test_the_client_side_of_each_pgbouncer_host(sentence, pooler, expected):
    clients = client_plan(**pooler)["poolers"]["app1"]["clients"]
    assert {key: clients[key] for key in expected} == expected, sentence


def shares_plan(clients, users=("shop", "reports")):
    named = {"name": "app", "host": "db1", "users": list(users), "pool_size": 10}
    return plan(
        {"db1": server(), "app1": bouncer(named, cpus=4, headroom_pgbouncer_clients=clients)},
        groups={"postgresql": ["db1"], "pgbouncer": ["app1"]},
    )


def test_declared_users_and_databases_become_pgbouncers_client_shares():
    clients = shares_plan(
        [
            {"name": "web", "connections": 10, "instances": 6, "user": "shop", "database": "app"},
            {"name": "admin", "connections": 5, "user": "shop"},
            {"name": "reports", "connections": 3, "user": "reports", "database": "app"},
            {"name": "anyone", "connections": 7},
        ]
    )["poolers"]["app1"]["clients"]
    assert clients["user_limits"] == {"reports": 3, "shop": 65}
    assert clients["database_limits"] == {"app": 63}


def test_a_client_share_for_a_user_the_entries_do_not_name_fails_before_any_host_changes():
    with pytest.raises(AnsibleFilterError, match="user 'shop' is not named in this host's pgbouncer_databases users "
                                                 r"\(none: its entries give counts\)"):
        client_plan(headroom_pgbouncer_clients=[{"name": "web", "connections": 2, "user": "shop"}])
    with pytest.raises(AnsibleFilterError, match=r"user 'nobody' is not named .* \(reports, shop\)"):
        shares_plan([{"name": "web", "connections": 2, "user": "nobody"}])


@pytest.mark.parametrize(
    ("client", "message"),
    [
        ({"name": "web", "connections": 1, "database": "nope"}, "database 'nope' is not one of this host's pgbouncer_databases (app)"),
        ({"name": "web", "connections": 1, "user": ""}, "user must be a PgBouncer user name, got ''"),
        ({"name": "web", "connections": 1, "pool": 3}, "unknown key(s) pool"),
    ],
)
def test_bad_client_shares_fail_naming_the_host_and_the_variable(client, message):
    with pytest.raises(AnsibleFilterError) as err:
        client_plan(headroom_pgbouncer_clients=[client])
    assert "pgbouncer host app1: headroom_pgbouncer_clients[0]" in str(err.value)
    assert message in str(err.value)


def test_direct_roles_get_their_declared_share_as_connection_limit():
    result = plan(
        {
            "db1": server(),
            "db2": server(postgresql_primary="db1"),
            # app's pools on db1: (10 + 2 reserve) x 2 processes = 24
            "app1": bouncer({"name": "app", "host": "db1", "users": ["app"], "pool_size": 10}, pgbouncer_processes=2,
                            pgbouncer_reserve_pool_size=2),
        },
        clients=[
            {"name": "cron", "target": "db1", "connections": 5, "instances": 3, "role": "app"},
            {"name": "leaky", "target": "db1", "connections": 4, "role": "leaky"},
            {"name": "monitoring", "target": "db1", "connections": 2, "role": "monitor", "reserved": True},
            {"name": "standby reports", "target": "db2", "connections": 6, "role": "leaky"},
            {"name": "nameless", "target": "db1", "connections": 9},
        ],
    )
    # A role that is also a PgBouncer user keeps room for its pools: 15 + 24 = 39. The standby's
    # 6 for leaky is larger than the primary's 4, and one catalog serves both: the primary sets 6.
    assert result["servers"]["db1"]["role_connection_limits"] == {"app": 39, "leaky": 6, "monitor": 2}
    assert result["servers"]["db2"]["role_connection_limits"] == {}


def test_a_role_limited_on_the_primary_leaves_room_for_its_pools_on_the_standby():
    result = plan(
        {
            "db1": server(),
            "db2": server(postgresql_primary="db1"),
            # app reaches only the standby through PgBouncer: (10 + 2) x 3 processes = 36 there (4 CPUs)
            "app1": bouncer({"name": "ro", "host": "db2", "users": ["app", "other"], "pool_size": 10},
                            cpus=4, pgbouncer_processes=3, pgbouncer_reserve_pool_size=2),
        },
        clients=[{"name": "cron", "target": "db1", "connections": 5, "role": "app"}],
    )
    assert result["servers"]["db1"]["role_connection_limits"] == {"app": 36}


def test_the_sized_max_client_conn_reaches_the_file_descriptor_limit():
    sized = client_plan(headroom_pgbouncer_clients=[{"name": "web", "connections": 100, "instances": 20}])
    sizing = sized["poolers"]["app1"]["sizing"]
    # 2000 + 400 spare; PgBouncer expects 2400 + 10 + pool 10 descriptors, plus 10% and 100.
    assert sizing["max_client_conn"] == 2400
    assert sizing["nofile_limit"] == math.ceil((2400 + 10 + 10) * 1.1) + 100
    assert sized["ok"] and sized["problems"] == []


def test_clients_over_max_client_conn_x_processes_fail_naming_host_sum_limit_applications_and_fix():
    result = client_plan(headroom_pgbouncer_clients=[WEB, CRON], pgbouncer_max_client_conn=30, pgbouncer_processes=2)
    pooler = result["poolers"]["app1"]
    assert pooler["clients"]["verdict"] == "over"
    assert not result["ok"] and result["problems"] == [pooler["problem"]]
    message = pooler["problem"]
    for part in (
        "pgbouncer host app1",
        "open 70 client connections",
        "at most 60 (pgbouncer_max_client_conn 30 x 2 processes)",
        "no more connections allowed (max_client_conn)",
        "web 10 x 6 = 60; cron 5 x 2 = 10",
        "raise pgbouncer_max_client_conn for app1 (at least 35 per process; 100",
        "headroom_pgbouncer_clients",
    ):
        assert part in message, part
    markdown, lines = fleet_plan_markdown(result), fleet_plan_lines(result)
    assert f"- {message}" in markdown
    assert lines[-1].startswith("app1 (PgBouncer): clients 70") and lines[-1].endswith(f"PROBLEM: {message}")


def test_clients_that_fit_only_if_spread_over_the_processes_are_a_warning():
    result = client_plan(headroom_pgbouncer_clients=[WEB, CRON], pgbouncer_max_client_conn=50, pgbouncer_processes=2)
    assert result["ok"] and result["poolers"]["app1"]["clients"]["verdict"] == "ok"
    assert result["warnings"] == result["poolers"]["app1"]["warnings"]
    assert "more than one process's max_client_conn 50; they fit the 2 processes only if" in result["warnings"][0]


def test_a_pinned_nofile_limit_below_what_max_client_conn_needs_is_a_problem():
    result = client_plan(headroom_pgbouncer_clients=[{"name": "web", "connections": 100, "instances": 20}],
                         pgbouncer_nofile_limit=2000)
    assert result["problems"] == [result["poolers"]["app1"]["problem"]]
    assert "pgbouncer_nofile_limit 2000 is below the 2762 file descriptors that max_client_conn 2400" in (
        result["problems"][0])


def test_the_role_default_of_max_client_conn_does_not_count_as_the_operators():
    # The role's default is a template ("sized from the plan, else 1000"); only the inventory's value is kept.
    defaults = DEFAULTS | {"pgbouncer_max_client_conn": "{{ connection_budget_pgbouncer_max_client_conn | default(1000) }}"}
    hostvars = {"db1": server(), "app1": bouncer(POOL, headroom_pgbouncer_clients=[WEB])}
    result = fleet_plan(hostvars, {"postgresql": ["db1"], "pgbouncer": ["app1"]}, None, defaults)
    assert result["poolers"]["app1"]["clients"]["max_client_conn_source"] == "sized"


def test_the_markdown_and_the_console_lines_show_client_demand_against_max_client_conn_x_processes():
    result = client_plan(headroom_pgbouncer_clients=[WEB, CRON], pgbouncer_processes=2)
    markdown, lines = fleet_plan_markdown(result), fleet_plan_lines(result)
    assert "| app1 | 2 | transaction | 12 | 20 | db1 | 70 | 100 (sized) x 2 = 200 | ok | 1024 |" in markdown
    assert "- app1: web 10 x 6 = 60; cron 5 x 2 = 10" in markdown
    assert lines[-1] == (
        "app1 (PgBouncer): clients 70 (web 10 x 6 = 60; cron 5 x 2 = 10) against max_client_conn 100 (sized) x 2 "
        "processes = 200; 20 server connections to db1"
    )


@pytest.mark.parametrize(
    ("sentence", "clients", "message"),
    [
        ("a declaration must be a list", {"name": "web"}, r" must be a list of clients"),
        ("an entry needs connections", [{"name": "web"}], r"\[0\] needs connections"),
        ("a target belongs to direct clients only", [{"name": "web", "connections": 1, "target": "db1"}],
         r"unknown key\(s\) target; allowed are name, connections, instances, hosts, group"),
        ("one of instances, hosts and group", [{"name": "web", "connections": 1, "instances": 2, "group": "cron"}],
         r"more than one of instances, hosts and group"),
        ("connections are a count", [{"name": "web", "connections": "many"}],
         r"\[0\].connections must be an integer, got str 'many'"),
        ("a group must exist", [{"name": "web", "connections": 1, "group": "nope"}], r"names group 'nope'"),
    ],
)
def test_bad_pgbouncer_clients_fail_naming_the_host_the_variable_and_what_is_allowed(sentence, clients, message):
    with pytest.raises(AnsibleFilterError, match=rf"pgbouncer host app1: headroom_pgbouncer_clients.*{message}"):
        client_plan(headroom_pgbouncer_clients=clients)


# Servers outside the inventory (headroom_external_servers): counted, never sized.
RDS = {"address": "orders.abc123.eu-west-1.rds.amazonaws.com", "max_connections": 100, "reserved_connections": 2, "cpus": 2}


def external_plan(hostvars, external, clients=None):
    groups = {
        "postgresql": [h for h, v in hostvars.items() if "headroom_postgresql_version" in v],
        "pgbouncer": [h for h, v in hostvars.items() if "pgbouncer_databases" in v],
    }
    return fleet_plan(hostvars, groups, clients, DEFAULTS, external)


def test_an_external_server_counts_the_pools_and_direct_clients_that_reach_it_against_its_declared_max_connections():
    result = external_plan(
        {
            "db1": server(),
            "app1": bouncer({"name": "orders", "host": "orders-rds", "users": ["a", "b"], "pool_size": 10},
                            {"name": "local", "host": "db1", "users": ["a"], "pool_size": 5}),
        },
        {"orders-rds": RDS},
        clients=[{"name": "cron", "target": "orders-rds", "connections": 4}],
    )
    orders = result["external_servers"]["orders-rds"]
    assert orders["demand"] == 2 * 10 + 4
    assert orders["required_max_connections"] == 24 + 3 + 2
    assert orders["headroom"] == 100 - 29
    assert orders["verdict"] == "ok" and orders["problem"] is None
    assert orders["address"] == RDS["address"] and orders["port"] == 5432
    # The local entry still counts against db1, and nothing of orders-rds lands there.
    assert result["servers"]["db1"]["demand"] == 5
    assert result["ok"]
    assert "orders-rds" in result["poolers"]["app1"]["targets"]


def test_an_external_server_over_its_declared_max_connections_is_a_problem_naming_it_and_the_fix():
    result = external_plan(
        {"db1": server(), "app1": bouncer({"name": "orders", "host": "orders-rds", "users": 5, "pool_size": 20})},
        {"orders-rds": RDS},
    )
    assert not result["ok"]
    (problem,) = result["problems"]
    assert problem.startswith("orders-rds (outside the inventory) is over its connection ceiling: the fleet may open 100")
    assert "declared max_connections is 100" in problem and "headroom_external_servers" in problem


def test_an_external_server_with_few_spare_slots_gets_a_warning_not_a_problem():
    result = external_plan(
        {"db1": server(), "app1": bouncer({"name": "orders", "host": "orders-rds", "users": 4, "pool_size": 22})},
        {"orders-rds": RDS},
    )
    assert result["ok"]
    assert [w for w in result["warnings"] if w.startswith("orders-rds: max_connections 100 leaves 7 spare slots")]


def test_an_entry_may_name_an_external_server_by_its_address():
    result = external_plan(
        {"db1": server(), "app1": bouncer({"name": "orders", "host": RDS["address"], "users": 1, "pool_size": 3})},
        {"orders-rds": RDS},
    )
    assert result["external_servers"]["orders-rds"]["demand"] == 3


def test_the_pool_rule_needs_the_cpus_of_an_external_server_or_pgbouncer_server_cpus():
    hostvars = {"db1": server(), "app1": bouncer({"name": "orders", "host": "orders-rds", "users": 1})}
    without_cpus = {k: v for k, v in RDS.items() if k != "cpus"}
    with pytest.raises(AnsibleFilterError, match=r"CPUs of orders-rds.*headroom_external_servers.orders-rds.*pgbouncer_server_cpus"):
        external_plan(hostvars, {"orders-rds": without_cpus})
    hostvars["app1"]["pgbouncer_server_cpus"] = 4
    assert external_plan(hostvars, {"orders-rds": without_cpus})["ok"]


@pytest.mark.parametrize(
    ("external", "match"),
    [
        ({"db1": RDS}, r"headroom_external_servers.db1: .* no inventory host, got 'db1'"),
        ({"x": {"max_connections": 10}}, r"headroom_external_servers.x needs the key\(s\) address"),
        ({"x": {"address": "x.example", "max_connections": 10, "size": 1}}, r"unknown key\(s\) size"),
        ({"x": {"address": "/var/run/postgresql", "max_connections": 10}}, r"x.address must be the DNS name or IP"),
        ({"x": {"address": "x.example", "max_connections": 3}}, r"x.max_connections must be at least 4, got 3"),
        ({"x": {"address": "x.example", "max_connections": 10, "port": 0}}, r"x.port must be at least 1"),
        ([RDS], r"headroom_external_servers must be a mapping"),
    ],
)
def test_a_bad_external_server_declaration_is_refused_naming_it(external, match):
    with pytest.raises(AnsibleFilterError, match=match):
        external_plan({"db1": server()}, external)


@pytest.mark.parametrize("key", ["role", "reserved"])
def test_a_direct_client_of_an_external_server_cannot_ask_for_a_share_headroom_cannot_enforce_there(key):
    client = {"name": "cron", "target": "orders-rds", "connections": 2, key: "cron" if key == "role" else True}
    with pytest.raises(AnsibleFilterError, match=rf"outside the inventory, where headroom changes nothing, so it cannot have {key}"):
        external_plan({"db1": server()}, {"orders-rds": RDS}, clients=[client])


def test_an_unknown_entry_host_names_headroom_external_servers_as_a_way_out():
    with pytest.raises(AnsibleFilterError, match=r"declare it in headroom_external_servers with its max_connections"):
        external_plan({"db1": server(), "app1": bouncer({"name": "x", "host": "elsewhere.example", "users": 1})}, {})


def test_the_reports_show_external_servers():
    result = external_plan(
        {"db1": server(), "app1": bouncer({"name": "orders", "host": "orders-rds", "users": 1, "pool_size": 3})},
        {"orders-rds": RDS},
    )
    lines = fleet_plan_lines(result)
    assert any(line.startswith(f"orders-rds (outside the inventory, {RDS['address']}:5432): demand 3") for line in lines)
    markdown = fleet_plan_markdown(result)
    assert "## Servers outside the inventory" in markdown
    assert f"| orders-rds | {RDS['address']}:5432 | 100 | 5 | 3 | 92 | ok |" in markdown
    assert "1 server(s) outside the inventory" in markdown


# pgpool-II nodes (group pgpool): counted on every backend they front, as PgBouncer hosts are.
def pgpool_plan(hostvars, external=None):
    groups = {
        "postgresql": [h for h, v in hostvars.items() if "headroom_postgresql_version" in v],
        "pgbouncer": [h for h, v in hostvars.items() if "pgbouncer_databases" in v],
        "pgpool": [h for h, v in hostvars.items() if "pgpool_backends" in v],
    }
    return fleet_plan(hostvars, groups, None, DEFAULTS, external)


def pgpool_node(*hosts, **extra):
    return {"pgpool_backends": [{"host": host} for host in hosts], **extra}


def test_every_pgpool_node_is_counted_on_its_primary_and_standbys():
    result = pgpool_plan(
        {
            "db1": server(cpus=4),
            "db2": server(cpus=2, postgresql_primary="db1"),
            "pool1": pgpool_node("db1", "db2", pgpool_users=[{"name": "app"}, {"name": "report"}]),
            "pool2": pgpool_node("db1", "db2", pgpool_users=[{"name": "app"}, {"name": "report"}]),
        }
    )
    node = result["pgpool"]["pool1"]
    # The smallest backend's 2 CPUs: 4 x 2 + 4 = 12 children, one cached connection per user (2).
    assert (node["sizing"]["num_init_children"], node["sizing"]["max_pool"]) == (12, 2)
    assert node["sizing"]["connections"] == 12 * 2 + 2 + 2 == 28
    assert node["targets"] == ["db1", "db2"]
    for host in ("db1", "db2"):
        assert result["servers"][host]["demand"] == 2 * 28
        assert [c["kind"] for c in result["servers"][host]["contributors"]] == ["pgpool", "pgpool"]
    # The standby runs at least its primary's max_connections, and both cover the two nodes.
    assert result["servers"]["db1"]["max_connections"] >= 2 * 28 + 3
    assert result["servers"]["db2"]["max_connections"] >= result["servers"]["db1"]["max_connections"]
    # What the role subtracts from the running max_connections: the other node's 28.
    assert [(b["host"], b["target"], b["other_demand"]) for b in node["backends"]] == [("db1", "db1", 28), ("db2", "db2", 28)]
    assert result["ok"]


def test_a_role_that_logs_in_through_pgpool_keeps_room_for_every_child_in_its_connection_limit():
    hostvars = {
        "db1": server(cpus=4),
        "db2": server(cpus=2, postgresql_primary="db1"),
        "pool1": pgpool_node("db1", "db2", pgpool_users=[{"name": "app"}, {"name": "report"}]),
    }
    groups = {"postgresql": ["db1", "db2"], "pgbouncer": [], "pgpool": ["pool1"]}
    result = fleet_plan(hostvars, groups, [{"name": "cron", "target": "db1", "connections": 5, "role": "app"}], DEFAULTS)
    # Each of the 12 children may cache app's connection to each of max_pool 2 databases: 5 + 12 x 2.
    assert result["servers"]["db1"]["role_connection_limits"] == {"app": 29}
    assert result["servers"]["db2"]["role_connection_limits"] == {}


def test_a_pgpool_node_shares_the_budget_with_pgbouncer_pools_and_direct_clients():
    hostvars = {
        "db1": server(),
        "app1": bouncer({"name": "app", "host": "db1", "users": ["a"], "pool_size": 10}),
        "pool1": pgpool_node("db1", pgpool_num_init_children=30, pgpool_max_pool=1),
    }
    groups = {"postgresql": ["db1"], "pgbouncer": ["app1"], "pgpool": ["pool1"]}
    result = fleet_plan(hostvars, groups, [{"name": "cron", "target": "db1", "connections": 5}], DEFAULTS)
    assert result["servers"]["db1"]["demand"] == 10 + 34 + 5
    (backend,) = result["pgpool"]["pool1"]["backends"]
    assert backend["other_demand"] == 15
    assert result["pgpool"]["pool1"]["sizing"]["num_init_children_source"] == "given"


def test_pgpool_nodes_over_a_servers_ceiling_are_a_problem_that_names_them():
    result = pgpool_plan({"db1": server(memory="1GB"), "pool1": pgpool_node("db1", pgpool_num_init_children=2000)})
    assert not result["ok"]
    (problem,) = result["problems"]
    assert "pgpool pool1 (num_init_children 2000 x max_pool 1 + 4 checks) 2004" in problem


def test_a_pgpool_backend_may_be_an_address_or_a_server_outside_the_inventory():
    result = pgpool_plan(
        {"db1": server(ansible_host="10.0.0.5"), "pool1": pgpool_node("10.0.0.5", "orders-rds")},
        external={"orders-rds": RDS},
    )
    assert result["pgpool"]["pool1"]["targets"] == ["db1", "orders-rds"]
    assert result["external_servers"]["orders-rds"]["demand"] == 16
    assert result["servers"]["db1"]["demand"] == 16


@pytest.mark.parametrize(
    ("node", "external", "message"),
    [
        ({"pgpool_backends": []}, None, "pgpool host pool1: pgpool_backends must be a non-empty list"),
        ({"pgpool_backends": [{"port": 5432}]}, None, r"pgpool_backends\[0\] must be a mapping with a host"),
        (pgpool_node("db9"), None, r"pgpool_backends\[0\] has host 'db9'"),
        (pgpool_node("orders-rds"), {"orders-rds": {k: v for k, v in RDS.items() if k != "cpus"}},
         r"needs the CPUs of orders-rds.*pgpool_num_init_children for pool1"),
        (pgpool_node("db1", pgpool_max_pool=-1), None, "pgpool host pool1: pgpool_max_pool"),
    ],
)
def test_bad_pgpool_input_is_refused_naming_the_node_and_variable(node, external, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pgpool_plan({"db1": server(), "pool1": node}, external=external)


def test_the_plan_report_lists_the_pgpool_nodes():
    result = pgpool_plan({"db1": server(), "pool1": pgpool_node("db1")})
    lines = fleet_plan_lines(result)
    assert (
        "pool1 (pgpool-II): num_init_children 12 (pool rule of thumb: 4 x 2 CPUs + 4) x max_pool 1 + 2 checks + "
        "2 closing margin = 16 connections on each of db1"
    ) in lines
    assert any(line.startswith("db1: ") and "pgpool pool1 (num_init_children 12 x max_pool 1 + 4 checks) 16" in line
               for line in lines)
    markdown = fleet_plan_markdown(result)
    assert "1 PostgreSQL server(s), 0 PgBouncer host(s), 1 pgpool-II node(s)." in markdown
    assert "## pgpool-II nodes" in markdown
    assert "| pool1 | 12 (pool rule of thumb: 4 x 2 CPUs + 4) | 1 | 16 | 14 | db1 |" in markdown
    assert "- pgpool pool1 (num_init_children 12 x max_pool 1 + 4 checks) (pgpool): 16" in markdown


def test_the_plan_hands_each_node_its_pgpool_backends_with_what_the_others_hold():
    backends = [{"host": "db1", "weight": 0}, {"host": "db2", "port": 5433, "other_demand": 100}]
    result = pgpool_plan(
        {
            "db1": server(),
            "db2": server(postgresql_primary="db1"),
            "pool1": {"pgpool_backends": backends},
            "pool2": pgpool_node("db1"),
        }
    )
    # db1 also carries pool2's 16; the larger other_demand given for db2 is kept.
    assert result["pgpool"]["pool1"]["pgpool_backends"] == [
        {"host": "db1", "weight": 0, "other_demand": 16},
        {"host": "db2", "port": 5433, "other_demand": 100},
    ]
    assert [b["other_demand"] for b in result["pgpool"]["pool1"]["backends"]] == [16, 0]
