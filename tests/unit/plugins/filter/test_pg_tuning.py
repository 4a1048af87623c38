"""pg_tuning_plans and pg_pending_restart: postgresql_tuning's decisions from one read of a host."""

import copy

import pytest
from ansible_collections.headroom.pg.plugins.filter.fleet_plan import _server_spec
from ansible_collections.headroom.pg.plugins.filter.pg_tuning import (
    pg_pending_restart,
    pg_tuning_files,
    pg_tuning_live,
    pg_tuning_plans,
    pg_tuning_report,
)
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_tuning import in_role_terms, tuning_spec

GB = 2**30
MANAGED = "/etc/postgresql/16/main/conf.d/50-headroom.conf"
VARIABLES = {
    "clusters": [],
    "profile": "mixed",
    "storage": "ssd",
    "max_connections": None,
    "connection_demand": None,
    "active_demand": None,
    "reserved_connections": 0,
    "spare_connections": None,
    "connection_memory": None,
    "memory_fraction": 1.0,
    "reserved_memory": 0,
    "baseline": {"password_encryption": "scram-sha-256"},
    "overrides": {},
    "allow_restart": False,
    "reset_alter_system": False,
    "backups_kept": 5,
    "include_file": "50-headroom.conf",
    "ready_timeout": 60,
    "role_connection_limits": {},
}


def stopped(name="16/main", version=16):
    return {
        "name": name,
        "wanted": True,
        "version": version,
        "running": False,
        "pkglibdir": f"/usr/lib/postgresql/{version}/lib",
        "config_file": f"/etc/postgresql/{name}/postgresql.conf",
        "include_dir_set": True,
        "managed_file": {"path": MANAGED, "exists": True, "mtime": 100.0, "dir_exists": True, "backups": [],
                         "dir_mode": "0750", "dir_owner": "postgres", "dir_group": "postgres"},
        "resources": {"memory": 4 * GB, "cpus": 2, "cgroup_memory_limits": [], "cgroup_cpu_limits": []},
    }


def running_as_planned(**changes):
    """A running cluster whose server runs exactly what the role would write."""
    cluster = stopped()
    settings = pg_tuning_plans({"clusters": [cluster]}, VARIABLES, "db1")["plans"][0]["settings"]
    rows = [{"name": name, "setting": str(value), "unit": None, "vartype": "string", "context": "sighup",
             "pending_restart": False} for name, value in settings.items()]
    files = [{"name": name, "setting": str(value), "sourcefile": MANAGED, "sourceline": 1, "error": None}
             for name, value in settings.items()]
    cluster.update(running=True, settings=rows, file_settings=files, file_errors=[], config_file_settings={},
                   load_time=200.0, start_time=50.0, reserved_roles_lacking=[], reserved_roles_missing=[])
    cluster.update(changes)
    return cluster


def plan_of(cluster, **variables):
    planned = pg_tuning_plans({"clusters": [cluster]}, dict(VARIABLES, **variables), "db1")
    assert planned["refusals"] == []
    return planned["plans"][0]


def test_a_server_that_runs_its_files_needs_nothing():
    plan = plan_of(running_as_planned())
    assert plan["diff"] == [] and plan["pending"] == []
    assert plan["needs_apply"] is False, plan["apply_reasons"]


def limit(role, wanted, now, exists=True, superuser=False):
    return {"role": role, "wanted": wanted, "exists": exists, "connection_limit": now if exists else None,
            "superuser": superuser}


def test_roles_whose_connection_limit_differs_are_set_and_the_others_named():
    plan = plan_of(running_as_planned(role_limits=[
        limit("shop", 20, -1), limit("reports", 5, 5), limit("later", 3, None, exists=False),
        limit("postgres", 2, -1, superuser=True),
    ]))
    assert plan["role_limits"] == [{"role": "shop", "wanted": 20, "connection_limit": -1},
                                   {"role": "postgres", "wanted": 2, "connection_limit": -1}]
    assert plan["apply_reasons"] == ["connection limits to set"]
    assert any("later" in w and "do not exist" in w for w in plan["warnings"])
    assert any("postgres" in w and "superusers" in w for w in plan["warnings"])


def test_roles_at_their_limit_need_nothing_and_a_standby_sets_none():
    assert plan_of(running_as_planned(role_limits=[limit("shop", 20, 20)]))["needs_apply"] is False
    standby = plan_of(running_as_planned(in_recovery=True, role_limits=[limit("shop", 20, -1)]))
    assert standby["role_limits"] == [] and standby["needs_apply"] is False


def test_a_file_newer_than_the_last_load_asks_for_a_reload():
    cluster = running_as_planned()
    cluster["managed_file"]["mtime"] = 300.0
    assert plan_of(cluster)["apply_reasons"] == ["reload"]


def test_a_restart_only_difference_is_pending_and_applied_only_when_restarts_are_allowed():
    cluster = running_as_planned()
    row = next(row for row in cluster["settings"] if row["name"] == "shared_buffers")
    row.update(setting="1", pending_restart=True)
    plan = plan_of(cluster)
    assert [(p["name"], p["cluster"]) for p in plan["pending"]] == [("shared_buffers", "16/main")]
    assert plan["needs_apply"] is False
    assert plan_of(cluster, allow_restart=True)["apply_reasons"] == ["restart"]


def test_the_plans_list_every_running_clusters_pending_and_overridden_settings_and_none_of_a_stopped_one():
    waiting = running_as_planned()
    next(row for row in waiting["settings"] if row["name"] == "shared_buffers").update(setting="1", pending_restart=True)
    overridden = running_as_planned(name="16/other")
    next(row for row in overridden["file_settings"] if row["name"] == "work_mem").update(
        setting="64MB", sourcefile="/var/lib/postgresql/16/other/postgresql.auto.conf")
    planned = pg_tuning_plans({"clusters": [waiting, overridden, stopped("16/third")]}, VARIABLES, "db1")
    # Three clusters share the host's memory, so more settings differ than the one changed here.
    assert ("16/main", "shared_buffers") in [(p["cluster"], p["name"]) for p in planned["pending"]]
    assert [(o["cluster"], o["name"]) for o in planned["overridden"]] == [("16/other", "work_mem")]
    assert planned["pending"] == [row for plan in planned["plans"] for row in plan.get("pending", [])]
    assert "16/third" not in {row["cluster"] for row in planned["pending"] + planned["overridden"]}
    refused = pg_tuning_plans({"clusters": [waiting]}, dict(VARIABLES, clusters=["16/missing"]), "db1")
    assert refused["refusals"] and refused["pending"] == [] and refused["overridden"] == []


def test_alter_system_overrides_are_kept_unless_reset():
    cluster = running_as_planned()
    row = next(row for row in cluster["file_settings"] if row["name"] == "work_mem")
    row.update(setting="64MB", sourcefile="/var/lib/postgresql/16/main/postgresql.auto.conf")
    plan = plan_of(cluster)
    assert [o["name"] for o in plan["overridden"]] == ["work_mem"]
    assert "work_mem" not in plan["effective"] and plan["needs_apply"] is False
    reset = plan_of(cluster, reset_alter_system=True)
    assert reset["overridden"] == [] and "work_mem" in reset["effective"]
    assert "ALTER SYSTEM values to reset" in reset["apply_reasons"]


def test_file_errors_send_the_cluster_to_the_check():
    cluster = running_as_planned(file_errors=[{"name": "x", "error": "invalid"}])
    assert plan_of(cluster)["apply_reasons"] == ["files have errors"]


def test_a_parameter_the_server_does_not_know_goes_to_the_check_that_names_it():
    cluster = running_as_planned()
    cluster["settings"] = [row for row in cluster["settings"] if row["name"] != "work_mem"]
    plan = plan_of(cluster)
    assert plan["diff"] is None and "reload" in plan["apply_reasons"]


def test_reserved_roles_are_granted_on_16_only():
    cluster = running_as_planned(reserved_roles_lacking=["ops"])
    assert plan_of(cluster)["apply_reasons"] == ["reserved roles to grant"]
    cluster["version"] = 15
    assert "reserved roles to grant" not in plan_of(cluster)["apply_reasons"]


def test_backups_beyond_the_kept_ones_are_pruned_but_not_the_file_the_server_started_with():
    cluster = running_as_planned(start_time=15.0)
    cluster["managed_file"]["backups"] = [{"path": f"b{i}", "mtime": 40.0 - i * 10} for i in range(4)]  # 40 30 20 10
    assert plan_of(cluster, backups_kept=4)["needs_apply"] is False
    assert plan_of(cluster, backups_kept=1)["apply_reasons"] == ["backups to prune"]
    # b3 (mtime 10) is the newest no younger than the start (15): kept whatever the count.
    cluster["managed_file"]["backups"] = cluster["managed_file"]["backups"][:1] + cluster["managed_file"]["backups"][3:]
    assert plan_of(cluster, backups_kept=1)["needs_apply"] is False


def test_full_mode_keeps_the_clusters_own_settings_but_never_a_managed_one():
    cluster = running_as_planned(config_file_settings={"archive_mode": "on", "work_mem": "1MB"})
    cluster["settings"].append({"name": "port", "setting": "5433", "unit": None, "vartype": "integer",
                                "context": "postmaster", "pending_restart": False})
    kept = plan_of(cluster)["kept"]
    assert kept == {"archive_mode": "on", "port": "5433"}


def test_missing_and_absent_clusters_are_refused_naming_the_variable():
    refused = pg_tuning_plans({"clusters": [stopped()]}, dict(VARIABLES, clusters=["15/other"]), "db1")
    assert refused["plans"] == []
    assert refused["refusals"] == [
        'postgresql_tuning_clusters names ["15/other"], which db1 does not have (pg_lsclusters lists ["16/main"]).'
    ]
    assert "No PostgreSQL cluster on db1" in pg_tuning_plans({"clusters": []}, VARIABLES, "db1")["refusals"][0]


def test_engine_errors_come_out_in_the_roles_variable_names():
    refused = pg_tuning_plans({"clusters": [stopped()]}, dict(VARIABLES, reserved_memory="8GB"), "db1")
    assert refused["refusals"][0].startswith("Cluster 16/main was not changed: usable memory is memory 4GB x "
                                             "postgresql_tuning_memory_fraction 1.0 - postgresql_tuning_reserved_memory")
    assert in_role_terms("max_connections 5 is below the spec key connection_demand") == (
        "postgresql_tuning_max_connections 5 is below postgresql_tuning_connection_demand"
    )
    assert in_role_terms("the ceiling keeps max_connections at 90") == "the ceiling keeps max_connections at 90"


def test_clusters_of_a_host_share_its_memory():
    two = [stopped("16/main"), stopped("16/other")]
    plans = pg_tuning_plans({"clusters": two}, VARIABLES, "db1")["plans"]
    alone = pg_tuning_plans({"clusters": two[:1]}, VARIABLES, "db1")["plans"][0]
    assert plans[0]["settings"]["shared_buffers"] != alone["settings"]["shared_buffers"]


def test_the_fleet_plan_builds_the_same_spec_as_the_role():
    resources = {"memory": 4 * GB, "cpus": 2, "version": 16, "clusters": 1}
    defaults = {f"postgresql_tuning_{key}": value for key, value in VARIABLES.items()}
    hostvars = {"db1": {"postgresql_tuning_overrides": {"work_mem": "8MB"}}}
    role = tuning_spec(resources, 16, lambda key: dict(VARIABLES, overrides={"work_mem": "8MB"}).get(key), 1, demand=False)
    assert _server_spec(hostvars, "db1", resources, defaults) == role
    assert role["overrides"] == {"password_encryption": "scram-sha-256", "work_mem": "8MB"}


def test_pending_restart_says_whether_it_lowers_a_parity_setting():
    cluster = running_as_planned()
    for row in cluster["settings"]:
        if row["name"] == "max_connections":
            row.update(setting="200", pending_restart=True)
    files = copy.deepcopy(cluster["file_settings"])
    cluster["file_settings"] = [dict(row, setting="100") if row["name"] == "max_connections" else row for row in files]
    assert pg_pending_restart([cluster], ["max_connections"]) == [
        {"cluster": "16/main", "name": "max_connections", "running": "200", "configured": "100", "lowered": True}
    ]
    assert pg_pending_restart([stopped()], ["max_connections"]) == []


@pytest.mark.parametrize("error", [None, "setting could not be applied"])
def test_pending_restart_reads_the_value_the_files_give(error):
    cluster = running_as_planned()
    for row in cluster["settings"]:
        if row["name"] == "shared_buffers":
            row.update(pending_restart=True)
    for row in cluster["file_settings"]:
        if row["name"] == "shared_buffers":
            row.update(setting="2GB", error=error)
    assert pg_pending_restart([cluster], [])[0]["configured"] == "2GB"


def test_an_include_directory_others_can_read_is_made_ready_again():
    cluster = running_as_planned()
    assert plan_of(cluster)["include_dir_ready"] is True
    cluster["managed_file"]["dir_mode"] = "0755"
    assert plan_of(cluster)["include_dir_ready"] is False
    cluster["managed_file"]["dir_mode"], cluster["include_dir_set"] = "0750", False
    assert plan_of(cluster)["include_dir_ready"] is False


def test_live_reads_the_server_again_against_the_plans_settings():
    cluster = running_as_planned()
    plan = plan_of(cluster)
    assert pg_tuning_live({"clusters": [cluster]}, plan, VARIABLES) | {} == {
        key: plan[key] for key in ("file_errors", "reset_alter_system", "overridden", "effective", "diff", "pending",
                                   "reload", "load_time", "alter_system")
    }
    # The server now runs another work_mem: the new read shows it, and a reload is due.
    changed = copy.deepcopy(cluster)
    row = next(r for r in changed["settings"] if r["name"] == "work_mem")
    row["setting"] = "1"
    live = pg_tuning_live({"clusters": [changed]}, plan, VARIABLES)
    assert [d["name"] for d in live["diff"]] == ["work_mem"] and live["reload"] is True


def test_live_of_a_cluster_that_is_not_running_names_it():
    plan = plan_of(running_as_planned())
    with pytest.raises(Exception, match="cluster 16/main is not running"):
        pg_tuning_live({"clusters": [stopped()]}, plan, VARIABLES)


@pytest.mark.parametrize(
    ("variables", "refusal"),
    [
        ({"max_connections": 0}, "postgresql_tuning_max_connections must be unset or 1 or more (got 0)."),
        ({"connection_demand": 10, "active_demand": 11},
         "postgresql_tuning_active_demand must be unset, or 0 up to postgresql_tuning_connection_demand (got 11)."),
        ({"memory_fraction": 1.5}, "postgresql_tuning_memory_fraction must be more than 0 and at most 1 (got 1.5)."),
        ({"include_file": "../x.conf"},
         'postgresql_tuning_include_file must be a file name of letters, digits and _ . - ending in .conf (got "../x.conf").'),
        ({"role_connection_limits": {"app": 0}},
         'postgresql_tuning_role_connection_limits must be a mapping of role names to connection limits of 1 or more '
         '(got {"app": 0}).'),
        ({"clusters": ["main"]}, 'postgresql_tuning_clusters must be a list of clusters as VERSION/NAME, e.g. "15/main" '
                                 '(got ["main"]).'),
        ({"overrides": {"work_mem; x": "1"}}, 'postgresql_tuning_overrides: "work_mem; x" is not a parameter name'),
        ({"overrides": {"search_path": "a\nb"}}, "postgresql_tuning_overrides.search_path: 'a\\nb' holds a newline"),
    ],
)
def test_bad_inputs_are_refused_before_the_host_is_planned(variables, refusal):
    planned = pg_tuning_plans({"clusters": [stopped()]}, dict(VARIABLES, **variables), "db1")
    assert planned["plans"] == []
    assert any(r.startswith(refusal) for r in planned["refusals"]), planned["refusals"]


def test_report_says_each_warning_override_and_pending_restart_on_a_line_and_nothing_when_all_is_well():
    plans = [{"name": "16/main", "settings": {"work_mem": "4MB"}, "warnings": ["a", "b"]}, {"name": "16/b", "warnings": []}]
    overridden = [{"cluster": "16/main", "name": "work_mem", "setting": "8MB", "sourceline": 3,
                   "sourcefile": "/var/lib/postgresql/16/main/postgresql.auto.conf"}]
    pending = [{"cluster": "16/main", "name": "max_connections", "running": "100", "configured": "40"}]
    assert pg_tuning_report(plans, overridden, pending) == [
        "Cluster 16/main: a",
        "Cluster 16/main: b",
        "Cluster 16/main: work_mem = 8MB in /var/lib/postgresql/16/main/postgresql.auto.conf:3 overrides the managed"
        " value 4MB (ALTER SYSTEM; set postgresql_tuning_reset_alter_system: true to reset it).",
        "1 setting(s) wait for a restart (postgresql_tuning_allow_restart is false; playbooks/restart.yml restarts them,"
        " and site.yml does when it is true): 16/main max_connections running 100, configured 40",
    ]
    assert pg_tuning_report([plans[1]], [], []) == []


def test_each_plans_managed_file_is_rendered_with_the_plan_as_the_write_task_names_it():
    plan = plan_of(running_as_planned())
    attributes = {"owner": "postgres", "group": "postgres", "mode": "0640"}
    assert pg_tuning_files([plan], "headroom.conf.j2", attributes) == [{
        "name": "16/main", "path": MANAGED, "template": "headroom.conf.j2", "vars": {"__postgresql_tuning_plan": plan},
        "owner": "postgres", "group": "postgres", "mode": "0640"}]
