"""Where the pgbouncer role's databases live and how its processes are laid out.

Both were Jinja loops of set_fact in roles/pgbouncer/tasks/plan.yml; they are read in many
tasks and templates, so the role keeps them as variables computed by these filters. So are
the files it renders from templates (pgbouncer_files).
"""

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

# Names that mean "this host" in a database entry's host.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def _external(external_servers, where):
    """The pgbouncer_external_servers entry a host names, by its key or by its address ({} when none)."""
    if where in external_servers:
        return external_servers[where]
    return next((server for server in external_servers.values() if server.get("address") == where), {})


def pgbouncer_targets(databases, sizing, host, hostvars, external_servers, socket_dir):
    """Each pgbouncer_databases entry as the role writes and prepares it, in order.

    ``sizing``: pgbouncer_tune's result (its ``databases`` in the same order); ``host``: this
    inventory host; ``hostvars``: the play's hostvars; ``external_servers``:
    pgbouncer_external_servers; ``socket_dir``: where this host's own server listens.

    Each target has name, dbname, port, address (this host's own server is reached over its Unix
    socket, an external server at its address, an inventory host at its ansible_host), socket
    (whether address is a socket directory), server (the inventory host that runs the server,
    where the role may prepare it; '' when unknown), users and the sized pool_size,
    reserve_pool_size and max_db_connections.
    """
    if not isinstance(sizing, Mapping) or len(sizing.get("databases", [])) != len(databases):
        raise AnsibleFilterError("pgbouncer_targets: sizing must be pgbouncer_tune's result for these databases")
    targets = []
    for entry, sized in zip(databases, sizing["databases"]):
        where = str(entry.get("host", host))
        external = _external(external_servers, where)
        if where == host:
            address = socket_dir
        elif external:
            address = external["address"]
        elif where in hostvars:
            address = hostvars[where].get("ansible_host", where)
        else:
            address = where
        if external:
            server = ""
        elif where in hostvars:
            server = where
        elif where.startswith("/") or where in LOCAL_NAMES:
            server = host
        else:
            server = ""
        targets.append({
            "name": entry["name"],
            "dbname": entry.get("dbname", entry["name"]),
            "port": int(entry.get("port", external.get("port", 5432))),
            "address": address,
            "socket": str(address).startswith("/"),
            "server": server,
            "users": entry.get("users"),
            "pool_size": sized["pool_size"],
            "reserve_pool_size": sized["reserve_pool_size"],
            "max_db_connections": sized["max_db_connections"],
        })
    return targets


def pgbouncer_auth_servers(targets, auth_mode, admin_users, stats_users):
    """Each inventory server the targets live on, in order of first use, for tasks/auth.yml and
    hba.yml: its name, the port to reach it on (its first target's), its targets, whether one is
    reached over the Unix socket, and the users whose verifiers the userlist takes from it (the
    targets' users in userlist mode; the admin and stats users from the first server, where they
    must exist)."""
    servers = []
    for target in targets:
        if target["server"] and target["server"] not in servers:
            servers.append(target["server"])
    result = []
    for position, server in enumerate(servers):
        own = [target for target in targets if target["server"] == server]
        users = []
        if auth_mode == "userlist":
            for target in own:
                if isinstance(target["users"], list):
                    users.extend(target["users"])
        if position == 0:
            users.extend(list(admin_users) + list(stats_users))
        result.append({
            "name": server,
            "port": own[0]["port"],
            "targets": own,
            "users": list(dict.fromkeys(users)),
            "socket": any(target["socket"] for target in own),
        })
    return result


def pgbouncer_instances(processes, config_dir, unix_socket_dir, log_dir):
    """The PgBouncer processes: one keeps Debian's unit and paths (id 0); several get
    pgbouncer@<n> (ids 1..n), each with its own ini, socket directory, pidfile and log."""
    count = int(processes)
    if count < 1:
        raise AnsibleFilterError(f"pgbouncer_instances: processes must be 1 or more, got {processes!r}")
    if count == 1:
        return [{
            "id": 0,
            "unit": "pgbouncer.service",
            "ini": f"{config_dir}/pgbouncer.ini",
            "unix_socket_dir": unix_socket_dir,
            "pidfile": "/var/run/postgresql/pgbouncer.pid",
            "logfile": f"{log_dir}/pgbouncer.log",
        }]
    return [{
        "id": number,
        "unit": f"pgbouncer@{number}.service",
        "ini": f"{config_dir}/pgbouncer-{number}.ini",
        "unix_socket_dir": f"/run/pgbouncer-{number}",
        "pidfile": f"/run/pgbouncer-{number}/pgbouncer.pid",
        "logfile": f"{log_dir}/pgbouncer-{number}.log",
    } for number in range(1, count + 1)]


def pgbouncer_files(instances, config_dir, user, last_good_suffix):
    """The files the role renders from its templates, as entries for lookup headroom.pg.rendered_files.

    Each has kind (userlist, unit or ini), path, template, owner, group and mode; an ini has
    vars (its process, as the template's ``instance``) and unit. Every ini has a last_good entry
    too: the copy of it kept once its RELOAD proved it live, wanted with the same rendering.
    One process keeps Debian's unit and takes a drop-in; several run the template unit
    pgbouncer@.service, which the role writes, and take its drop-in.
    """
    if not instances:
        raise AnsibleFilterError("pgbouncer_files: instances must be pgbouncer_instances' result (1 or more processes)")
    unit = "pgbouncer.service" if len(instances) == 1 else "pgbouncer@.service"
    private = {"owner": user, "group": user, "mode": "0640"}
    system = {"owner": "root", "group": "root", "mode": "0644"}
    files = [
        {"kind": "userlist", "path": f"{config_dir}/userlist.txt", "template": "userlist.txt.j2", **private},
        {"kind": "unit", "path": f"/etc/systemd/system/{unit}.d/headroom-limits.conf", "template": "limits.conf.j2", **system},
    ]
    if len(instances) > 1:
        files.append({"kind": "unit", "path": "/etc/systemd/system/pgbouncer@.service", "template": "pgbouncer@.service.j2", **system})
    for instance in instances:
        ini = {"path": instance["ini"], "template": "pgbouncer.ini.j2", "vars": {"instance": instance}, "unit": instance["unit"], **private}
        files += [dict(ini, kind="ini"), dict(ini, kind="last_good", path=instance["ini"] + last_good_suffix)]
    return files


class FilterModule:
    """The pgbouncer role's targets and processes."""

    def filters(self):
        return {
            "pgbouncer_targets": pgbouncer_targets,
            "pgbouncer_auth_servers": pgbouncer_auth_servers,
            "pgbouncer_instances": pgbouncer_instances,
            "pgbouncer_files": pgbouncer_files,
        }
