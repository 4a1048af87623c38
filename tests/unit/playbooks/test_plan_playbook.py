"""playbooks/plan.yml, really run with ansible-playbook on a generated 50-host inventory.

The expected numbers come from the generated files, added up here by hand (pools,
processes, direct clients, spare slots, standby parity), and the whole plan from calling fleet_plan
in this process on the same variables: the playbook must write exactly that.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.headroom.pg.plugins.filter.fleet_plan import fleet_plan, fleet_plan_markdown
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_units import GB

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
RESERVED = 3  # superuser_reserved_connections; reserved_connections is 0


def default_spare(demand):
    """Spare slots above demand + reserved: max(10, 20% of the demand rounded up); every server here has room."""
    return max(10, -(-demand // 5))


def generate(out, hosts=50, seed=7):
    subprocess.run(
        [sys.executable, REPO / "scripts/fleet-inventory.py", "--hosts", str(hosts), "--seed", str(seed), "--out", out],
        check=True,
        capture_output=True,
    )
    return out


def run_plan(inventory, reports, facts):
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(facts),  # no cached facts of other runs
        "ANSIBLE_NOCOLOR": "1",
    }
    return subprocess.run(
        [BIN / "ansible-playbook", "-i", inventory, "playbooks/plan.yml", "-e", f"connection_budget_report_dir={reports}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def inventory_model(inventory):
    """Every host's variables as Ansible merges them here: all, then its groups, then the host."""
    children = json.loads((inventory / "hosts.json").read_text())["all"]["children"]
    group_vars = {path.stem: json.loads(path.read_text()) for path in (inventory / "group_vars").glob("*.json")}
    groups = {group: list(body["hosts"]) for group, body in children.items()}
    hostvars = {}
    for group, body in children.items():
        for host, own in body["hosts"].items():
            variables = hostvars.setdefault(host, dict(group_vars.get("all", {})))
            variables.update(group_vars.get(group, {}))
            variables.update(own or {})
    return hostvars, groups


def role_defaults():
    defaults = {}
    for role in ("postgresql", "postgresql_tuning", "pgbouncer"):
        defaults |= yaml.safe_load((REPO / "roles" / role / "defaults/main.yml").read_text())
    return defaults


def expected_demand(hostvars, groups):
    """Per server, the connections the fleet may open, added up from the inventory."""
    demand = {server: 0 for server in groups["postgresql"]}
    allowance = {}
    defaults = role_defaults()
    for pooler in groups["pgbouncer"]:
        variables = hostvars[pooler]
        processes = variables.get("pgbouncer_processes", 1)
        # In auth_query mode the auth user has a pool in each database entry too.
        auth_pools = int(variables.get("pgbouncer_auth_mode", defaults["pgbouncer_auth_mode"]) == "auth_query")
        smallest = min(hostvars[database["host"]]["headroom_cpus"] for database in variables["pgbouncer_databases"])
        allowance[pooler] = 0
        for database in variables["pgbouncer_databases"]:
            pool = database.get("pool_size", 4 * smallest + 4)  # what the smallest server runs best at once
            connections = processes * pool * (len(database["users"]) + auth_pools)
            demand[database["host"]] += connections
            allowance[pooler] += connections
    for client in hostvars[groups["postgresql"][0]]["headroom_direct_clients"]:
        instances = len(groups[client["group"]]) if "group" in client else 1
        demand[client["target"]] += client["connections"] * instances
    return demand, allowance


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    work = tmp_path_factory.mktemp("plan")
    inventory = generate(work / "inventory")
    (work / "facts").mkdir()
    result = run_plan(inventory, work / "reports", work / "facts")
    return inventory, work / "reports", result


def test_plan_yml_succeeds_and_writes_both_reports(fleet):
    _inventory, reports, result = fleet
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (reports / "plan.json").stat().st_size > 0
    assert (reports / "plan.md").read_text().startswith("# Fleet plan")


def test_every_servers_demand_and_max_connections_add_up_from_the_inventory(fleet):
    inventory, reports, _result = fleet
    hostvars, groups = inventory_model(inventory)
    plan = json.loads((reports / "plan.json").read_text())
    demand, allowance = expected_demand(hostvars, groups)
    assert set(plan["servers"]) == set(groups["postgresql"])
    assert {server: entry["demand"] for server, entry in plan["servers"].items()} == demand
    assert {pooler: entry["server_connection_allowance"] for pooler, entry in plan["poolers"].items()} == allowance
    standbys = 0
    for server, entry in plan["servers"].items():
        own = demand[server] + RESERVED + default_spare(demand[server])
        primary = hostvars[server].get("postgresql_primary")
        if primary:  # standby parity: at least its primary's max_connections
            standbys += 1
            assert entry["max_connections"] == max(own, plan["servers"][primary]["max_connections"]), server
        else:
            assert entry["max_connections"] == own, server
        # Whatever max_connections is above demand + reserved is spare (parity may add to it).
        assert entry["spare_connections"] == entry["max_connections"] - demand[server] - RESERVED, server
        assert entry["resources"]["memory"] == int(hostvars[server]["headroom_memory"].removesuffix("GB")) * GB
        assert entry["resources"]["memory_source"] == "inventory"
        assert entry["headroom"] == entry["ceiling"] - entry["max_connections"] >= 0
    assert standbys > 0 and plan["ok"] and plan["problems"] == []


def test_the_reports_are_exactly_fleet_plan_of_the_inventory(fleet):
    inventory, reports, _result = fleet
    hostvars, groups = inventory_model(inventory)
    expected = fleet_plan(hostvars, groups, hostvars[groups["postgresql"][0]]["headroom_direct_clients"], role_defaults())
    assert json.loads((reports / "plan.json").read_text()) == expected
    assert (reports / "plan.md").read_text() == fleet_plan_markdown(expected)


def test_a_server_over_its_ceiling_fails_the_run_after_the_reports_are_written(tmp_path):
    inventory = generate(tmp_path / "inventory")
    hosts = json.loads((inventory / "hosts.json").read_text())
    primary = next(iter(hosts["all"]["children"]["postgresql"]["hosts"]))
    hosts["all"]["children"]["postgresql"]["hosts"][primary]["headroom_memory"] = "1GB"
    (inventory / "hosts.json").write_text(json.dumps(hosts))
    (tmp_path / "facts").mkdir()
    result = run_plan(inventory, tmp_path / "reports", tmp_path / "facts")
    assert result.returncode != 0
    assert "The fleet's connection budget does not fit" in result.stdout + result.stderr
    plan = json.loads((tmp_path / "reports/plan.json").read_text())
    assert plan["servers"][primary]["verdict"] == "over" and not plan["ok"]
    assert plan["problems"][0].startswith(f"{primary} is over its connection ceiling")
    assert f"- {plan['problems'][0]}" in (tmp_path / "reports/plan.md").read_text()
