"""How postgresql_tuning turns one host's read (module postgresql_info) and the role's variables
into a plan per cluster: the spec for the sizing engine, the settings, what overrides them,
what the server does not run yet, and whether anything on the host has to change.

The spec builder is shared with the fleet plan (filter fleet_plan), so the budget sizes each
server exactly as the role will.
"""

import json
import re

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pg_config import pg_conf_value
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_sizing import max_connections_report, tune

PREFIX = "postgresql_tuning_"

#: The sizing engine's spec keys that postgresql_tuning sets from a variable of the same name.
SIZING_KEYS = ("profile", "storage", "reserved_memory", "spare_connections", "connection_memory")
#: Spec keys that carry the demand: the fleet plan computes them, the role receives them.
DEMAND_KEYS = ("max_connections", "connection_demand", "active_demand", "reserved_connections")
#: Spec keys an engine message names, each the role's variable of the same name. max_connections
#: and connection_demand are also parameter names in the messages: only a message's first word.
NAMED_KEYS = ("memory_fraction", "reserved_memory", "overrides", "spare_connections", "active_demand",
              "connection_memory", "reserved_connections")
FIRST_WORD_KEYS = ("max_connections", "connection_demand")

#: The include directory of `include` mode: not world-readable, since the settings say how the
#: server logs and authenticates.
INCLUDE_DIR = {"mode": "0750", "owner": "postgres", "group": "postgres"}

#: ALTER SYSTEM writes this file; its values can be reset, other files' only edited.
AUTO_CONF = re.compile(r".*/postgresql\.auto\.conf$")

#: Settings `full` mode keeps from the running cluster where the replaced postgresql.conf does not set them.
KEPT_SETTINGS = (
    "data_directory", "hba_file", "ident_file", "external_pid_file", "port", "listen_addresses",
    "unix_socket_directories", "cluster_name", "ssl", "ssl_cert_file", "ssl_key_file", "log_line_prefix",
    "log_timezone", "timezone", "datestyle", "lc_messages", "lc_monetary", "lc_numeric", "lc_time",
    "default_text_search_config", "dynamic_shared_memory_type",
)


def tuning_spec(resources, version, variable, clusters, demand=True):
    """The sizing engine's spec for one cluster of a host.

    ``resources`` are the host's effective memory and CPUs; ``variable(name)`` gives
    postgresql_tuning_<name> (None when unset); ``clusters`` is how many clusters the host
    tunes, which share its memory equally. ``demand=False`` leaves out the demand keys.
    """
    overrides = dict(variable("baseline") or {})
    overrides.update(variable("overrides") or {})
    fraction = variable("memory_fraction")
    spec = {
        "memory": resources["memory"],
        "cpus": resources["cpus"],
        "version": int(version),
        "memory_fraction": float(1.0 if fraction is None else fraction) / max(1, clusters),
        "overrides": overrides,
    }
    for key in SIZING_KEYS + (DEMAND_KEYS if demand else ()):
        value = variable(key)
        if value is not None:
            spec[key] = int(value) if key == "reserved_connections" else value
    return spec


def in_role_terms(message):
    """An engine message with its spec keys named as the role's variables."""
    message = re.sub(r"\bthe spec key (\w+)", PREFIX + r"\1", message)
    message = re.sub(r"^(" + "|".join(FIRST_WORD_KEYS) + r")\b", PREFIX + r"\1", message)
    return re.sub(r"\b(?<!_)(" + "|".join(NAMED_KEYS) + r")\b", PREFIX + r"\1", message)


def size(cluster, resources, variable, clusters):
    """max_connections with its reason and warnings, and the settings, for one cluster."""
    spec = tuning_spec(resources, cluster["version"], variable, clusters)
    try:
        return max_connections_report(spec), tune(spec)
    except AnsibleFilterError as err:
        raise AnsibleFilterError(f"Cluster {cluster['name']} was not changed: {in_role_terms(str(err))}") from None


def overridden(file_settings, settings, managed_file, reset_alter_system):
    """The managed settings another file sets last (``file_settings``: the winning pg_file_settings
    rows): those ALTER SYSTEM set, which the role can reset; those that stay overridden; and the
    managed settings the server should run, the ones that stay overridden left out."""
    rows = [row for row in file_settings if row["name"] in settings and row["sourcefile"] != managed_file]
    alter_system = [row for row in rows if AUTO_CONF.match(row["sourcefile"] or "")]
    kept = [row for row in rows if not (reset_alter_system and row in alter_system)]
    names = {row["name"] for row in kept}
    effective = {name: value for name, value in settings.items() if name not in names}
    return {"alter_system": alter_system, "kept": kept, "effective": effective}


def kept_from_cluster(cluster, settings):
    """What a whole postgresql.conf (`full` mode) keeps: every setting the replaced file made,
    else the paths, port and addresses the cluster runs with now; never a managed setting."""
    running = {row["name"]: row["setting"] for row in cluster["settings"] if row["name"] in KEPT_SETTINGS}
    kept = dict(running, **cluster["config_file_settings"])
    return {name: value for name, value in kept.items() if name not in settings}


def include_dir_ready(cluster):
    """Whether postgresql.conf reads an include directory that exists with INCLUDE_DIR's mode and owner."""
    managed = cluster["managed_file"]
    return bool(cluster.get("include_dir_set")) and managed.get("dir_exists", False) and all(
        managed.get("dir_" + key) == value for key, value in INCLUDE_DIR.items()
    )


def backups_to_prune(cluster, kept):
    """Backups beyond the newest ``kept``, except the newest one no younger than the server's
    start: the file it started with, which a failed restart puts back."""
    backups = cluster["managed_file"]["backups"]  # newest first
    if len(backups) <= kept:
        return []
    started_with = [backup["path"] for backup in backups if backup["mtime"] <= cluster.get("start_time", 0)]
    protected = started_with[0] if started_with else None
    return [backup["path"] for backup in backups[kept:] if backup["path"] != protected]


OVERRIDE_NAME = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")
INCLUDE_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.conf")
CLUSTER_NAME = re.compile(r"[0-9]+/[A-Za-z0-9_][A-Za-z0-9_.-]*")
LIMIT = re.compile(r"[1-9][0-9]{0,8}")


def _number(value, kind=int):
    """The number Jinja's int or float filter makes of a value (0 for what is not one)."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        return kind(0)


def input_refusals(variables):
    """The role's variables outside their ranges or shapes (meta/argument_specs.yml checked the
    types), each as the sentence the role fails with: the variable, what is allowed, the value."""
    v = variables.get
    demand = v("connection_demand")
    limits = v("role_connection_limits") or {}
    ranges = [
        ("max_connections", v("max_connections") is None or _number(v("max_connections")) >= 1, "unset or 1 or more"),
        ("connection_demand", demand is None or _number(demand) >= 0, "unset or 0 or more"),
        ("active_demand", v("active_demand") is None or (_number(v("active_demand")) >= 0 and (
            demand is None or _number(v("active_demand")) <= _number(demand))),
         "unset, or 0 up to postgresql_tuning_connection_demand"),
        ("spare_connections", v("spare_connections") is None or _number(v("spare_connections")) >= 0,
         "unset or 0 or more"),
        ("memory_fraction", 0 < _number(v("memory_fraction"), float) <= 1, "more than 0 and at most 1"),
        ("include_file", bool(INCLUDE_FILE.fullmatch(str(v("include_file")))),
         "a file name of letters, digits and _ . - ending in .conf"),
        ("ready_timeout", _number(v("ready_timeout")) >= 1, "1 or more"),
        ("backups_kept", _number(v("backups_kept")) >= 0, "0 or more"),
        ("role_connection_limits", isinstance(limits, dict) and all(
            isinstance(role, str) and LIMIT.fullmatch(str(limit)) for role, limit in limits.items()),
         "a mapping of role names to connection limits of 1 or more"),
        ("clusters", all(CLUSTER_NAME.fullmatch(str(name)) for name in v("clusters") or []),
         'a list of clusters as VERSION/NAME, e.g. "15/main"'),
    ]
    refusals = [
        f"{PREFIX}{name} must be {allowed} (got {json.dumps(v(name))})." for name, ok, allowed in ranges if not ok
    ]
    for name, value in (v("overrides") or {}).items():
        if not isinstance(name, str) or not OVERRIDE_NAME.fullmatch(name):
            refusals.append(
                f"{PREFIX}overrides: {json.dumps(name)} is not a parameter name (lower-case letters, digits and '_', "
                "with at most one '.' for an extension's setting)."
            )
            continue
        try:
            pg_conf_value(value, f"{PREFIX}overrides.{name}")
        except AnsibleFilterError as err:
            refusals.append(str(err))
    return refusals


def missing_clusters(read, wanted, host):
    """Refusals for clusters asked for that the host does not have, or for no cluster at all."""
    found = [cluster["name"] for cluster in read["clusters"]]
    missing = [name for name in wanted if name not in found]
    if missing:
        return [f"{PREFIX}clusters names {json.dumps(missing)}, which {host} does not have "
                f"(pg_lsclusters lists {json.dumps(found)})."]
    if not found:
        return [f"No PostgreSQL cluster on {host} (pg_lsclusters lists none): install one first, "
                "e.g. with headroom.pg.postgresql."]
    return []


def role_limits(cluster):
    """The CONNECTION LIMIT each declared role still needs on a running cluster, and warnings.

    ``cluster["role_limits"]`` is what postgresql_info read for postgresql_tuning_role_connection_limits.
    A standby takes its roles from its primary (ALTER ROLE is refused there), a role that does not
    exist yet is named and set on a later run, and a superuser is named because PostgreSQL does not
    hold superusers to a connection limit. Returns ``(to_set, warnings)``; to_set rows have role,
    wanted and connection_limit (now).
    """
    rows = cluster.get("role_limits") or []
    if not rows or cluster.get("in_recovery"):
        return [], []
    missing = [row["role"] for row in rows if not row["exists"]]
    superusers = [row["role"] for row in rows if row["exists"] and row["superuser"]]
    warnings = []
    if missing:
        warnings.append(
            f"role(s) {', '.join(missing)} of postgresql_tuning_role_connection_limits do not exist; their "
            "connection share is set on the first run after they are created"
        )
    if superusers:
        warnings.append(
            f"role(s) {', '.join(superusers)} are superusers, which PostgreSQL does not hold to a CONNECTION "
            "LIMIT; give the application an ordinary role so its share is enforced"
        )
    to_set = [
        {"role": row["role"], "wanted": row["wanted"], "connection_limit": row["connection_limit"]}
        for row in rows
        if row["exists"] and row["connection_limit"] != row["wanted"]
    ]
    return to_set, warnings
