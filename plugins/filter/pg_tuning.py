"""The filter pg_tuning_plans: postgresql_tuning's decisions for every cluster of a host, from
one read (module postgresql_info) and the role's variables. The role's tasks only carry them out.

The rules live in ``plugins/plugin_utils/pg_tuning.py`` (spec, overrides, backups) and
``pg_sizing.py`` (the sizing model).
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pg_config import pg_conf_value, pg_library_files, pg_settings_diff
from ansible_collections.headroom.pg.plugins.filter.postgresql_sizing import effective_resources
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_inputs import check_mapping
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_tuning import (
    INCLUDE_DIR,
    backups_to_prune,
    include_dir_ready,
    input_refusals,
    kept_from_cluster,
    missing_clusters,
    overridden,
    role_limits,
    size,
)

TRUE_WORDS = ("on", "true", "yes", "1")


def plan_cluster(cluster, variables, clusters):
    """What the role does to one cluster. Keys: name, cluster, resources, connections, settings,
    warnings, libraries, huge_pages_on; for a running server also kept (`full` mode), alter_system,
    overridden, effective, diff, pending, reload, role_limits (the CONNECTION LIMITs to set), and
    needs_apply with its reasons."""
    resources = effective_resources(cluster["resources"])
    connections, settings = size(cluster, resources, variables.get, clusters)
    plan = {
        "name": cluster["name"],
        "cluster": cluster,
        "resources": resources,
        "connections": connections,
        "settings": settings,
        "warnings": connections["warnings"],
        "libraries": pg_library_files(settings, cluster["pkglibdir"]),
        "include_dir": INCLUDE_DIR,
        "include_dir_ready": include_dir_ready(cluster),
        "huge_pages_on": cluster["version"] >= 15
        and str(pg_conf_value(settings.get("huge_pages", ""), "huge_pages")).lower() in TRUE_WORDS,
    }
    if "settings" not in cluster:  # stopped: planned again once it runs
        return plan
    plan.update(live(cluster, settings, variables))
    limits_to_set, limit_warnings = role_limits(cluster)
    plan["warnings"] = plan["warnings"] + limit_warnings
    reasons = {
        "files have errors": bool(cluster["file_errors"]),
        "ALTER SYSTEM values to reset": bool(plan["reset_alter_system"]),
        "reload": plan["reload"],
        "restart": bool(plan["diff"]) and bool(variables.get("allow_restart")),
        "reserved roles to grant": cluster["version"] >= 16 and bool(cluster.get("reserved_roles_lacking")),
        "connection limits to set": bool(limits_to_set),
        "backups to prune": bool(backups_to_prune(cluster, int(variables.get("backups_kept") or 0))),
    }
    plan.update(
        kept=kept_from_cluster(cluster, settings),
        role_limits=limits_to_set,
        apply_reasons=[reason for reason, why in reasons.items() if why],
    )
    plan["needs_apply"] = bool(plan["apply_reasons"])
    return plan


def live(cluster, settings, variables):
    """How a running server stands against the managed ``settings``, from one read of it
    (postgresql_info): the file errors, the ALTER SYSTEM values to reset (when the role resets
    them), the managed settings other files override, the effective values, what the server does
    not run yet (diff, and pending: those waiting for a restart) and whether a reload is due (a
    difference that needs no restart, or a file newer than the last load)."""
    reset = bool(variables.get("reset_alter_system"))
    overrides = overridden(cluster["file_settings"], settings, cluster["managed_file"]["path"], reset)
    try:
        diff = pg_settings_diff(overrides["effective"], cluster["settings"])
    except AnsibleFilterError:
        diff = None  # a name this server does not know: the write's check says which, and puts the file back
    reload = diff is None or any(not row["pending_restart"] for row in diff) or (
        cluster["managed_file"]["mtime"] > cluster["load_time"]
    )
    return {
        "file_errors": cluster["file_errors"],
        "alter_system": overrides["alter_system"],
        "reset_alter_system": overrides["alter_system"] if reset else [],
        "overridden": [dict(row, cluster=cluster["name"]) for row in overrides["kept"]],
        "effective": overrides["effective"],
        "diff": diff,
        "pending": [dict(row, cluster=cluster["name"]) for row in diff or []],
        "reload": reload,
        "load_time": cluster["load_time"],
    }


def pg_tuning_live(read, plan, variables):
    """The plan's cluster as its server stands now (live), from a new read of the host by module
    postgresql_info: what apply.yml acts on after the write and checks after a reload or restart."""
    check_mapping(read, "pg_tuning_live input")
    found = [cluster for cluster in read["clusters"] if cluster["name"] == plan["name"]]
    if not found or "settings" not in found[0]:
        raise AnsibleFilterError(f"cluster {plan['name']} is not running: its server cannot be read")
    return live(found[0], plan["settings"], variables)


def pg_tuning_plans(read, variables, host):
    """Plans for the clusters a host tunes. ``read`` is what module postgresql_info returned,
    ``variables`` the role's variables without their postgresql_tuning_ prefix, ``host`` the
    inventory name. Returns ``{"plans": [...], "refusals": [...], "pending": [...], "overridden": [...]}``:
    input the role refuses is reported, in the role's variable names, not raised, so the role fails
    before any change; pending and overridden are every running cluster's, as the read found them."""
    check_mapping(read, "pg_tuning_plans input")
    check_mapping(variables, "pg_tuning_plans variables")
    refusals = input_refusals(variables)
    if refusals:
        return planned([], refusals)
    wanted = list(variables.get("clusters") or [cluster["name"] for cluster in read["clusters"]])
    refusals = missing_clusters(read, wanted, host)
    if refusals:
        return planned([], refusals)
    plans = []
    for cluster in read["clusters"]:
        if cluster["name"] not in wanted:
            continue
        try:
            plans.append(plan_cluster(cluster, variables, len(wanted)))
        except AnsibleFilterError as err:
            refusals.append(" ".join(str(err).split()))
    return planned(plans, refusals)


def planned(plans, refusals):
    """pg_tuning_plans' answer: the plans, the refusals, and every plan's pending and overridden rows."""
    return {
        "plans": plans,
        "refusals": refusals,
        "pending": [row for plan in plans for row in plan.get("pending", [])],
        "overridden": [row for plan in plans for row in plan.get("overridden", [])],
    }


def pg_pending_restart(clusters, parity):
    """The settings each running cluster (module postgresql_info) waits to restart for: name,
    cluster, the running value, the value the files give it, and whether that lowers one of the
    ``parity`` settings, which standbys must keep at or above their primary's."""
    pending = []
    for cluster in clusters:
        files = {
            row["name"]: row["setting"]
            for row in cluster.get("file_settings", [])
            if row["error"] in (None, "setting could not be applied")
        }
        for row in cluster.get("settings", []):
            if not row["pending_restart"]:
                continue
            configured = files.get(row["name"])
            lowered = (
                row["name"] in parity and str(configured or "").isdigit() and int(configured) < int(row["setting"])
            )
            pending.append({"cluster": cluster["name"], "name": row["name"], "running": row["setting"],
                            "configured": configured, "lowered": lowered})
    return pending


def pg_tuning_report(plans, overridden, pending):
    """The role's closing message, one line per finding: each plan's warnings, each managed setting
    that another file overrides (with the way to reset an ALTER SYSTEM value), and the settings that
    wait for a restart. [] when there is nothing to say."""
    managed = {plan["name"]: plan.get("settings", {}) for plan in plans}
    lines = ["Cluster %s: %s" % (plan["name"], warning) for plan in plans for warning in plan.get("warnings") or []]
    for row in overridden:
        hint = ""
        if str(row["sourcefile"]).endswith("/postgresql.auto.conf"):
            hint = " (ALTER SYSTEM; set postgresql_tuning_reset_alter_system: true to reset it)"
        lines.append("Cluster %s: %s = %s in %s:%s overrides the managed value %s%s." % (
            row["cluster"], row["name"], row["setting"], row["sourcefile"], row["sourceline"],
            managed.get(row["cluster"], {}).get(row["name"]), hint))
    if pending:
        lines.append(
            "%d setting(s) wait for a restart (postgresql_tuning_allow_restart is false; playbooks/restart.yml restarts"
            " them, and site.yml does when it is true): %s" % (len(pending), "; ".join(
                "%s %s running %s, configured %s" % (row["cluster"], row["name"], row.get("running"), row.get("configured"))
                for row in pending)))
    return lines


def pg_tuning_files(plans, template, attributes):
    """The managed file of each plan, as an entry for lookup headroom.pg.rendered_files: its path,
    the role's ``template`` rendered with the plan as ``__postgresql_tuning_plan`` (the loop
    variable of tasks/write.yml), and the ``attributes`` (owner, group, mode) the role writes it with."""
    check_mapping(attributes, "pg_tuning_files attributes")
    return [dict({"name": plan["name"], "path": plan["cluster"]["managed_file"]["path"], "template": template,
                  "vars": {"__postgresql_tuning_plan": plan}}, **attributes)
            for plan in plans]


class FilterModule:
    """postgresql_tuning's plan."""

    def filters(self):
        return {"pg_tuning_plans": pg_tuning_plans, "pg_tuning_live": pg_tuning_live, "pg_pending_restart": pg_pending_restart,
                "pg_tuning_report": pg_tuning_report, "pg_tuning_files": pg_tuning_files}
