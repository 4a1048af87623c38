#!/usr/bin/env python3
"""Write a realistic, deterministic inventory of N hosts for playbooks/plan.yml.

    scripts/fleet-inventory.py --hosts 10000 --out /tmp/fleet-10000
    ansible-playbook -i /tmp/fleet-10000 playbooks/plan.yml

The fleet is made of clusters. Each has a primary, zero to two streaming standbys
(postgresql_primary), two to six application hosts running PgBouncer (a read-write
database on the primary, a read-only one on the first standby) and zero to two cron
hosts whose jobs connect directly. Every host carries headroom_memory and headroom_cpus
(servers also headroom_postgresql_version), so planning connects to nothing.
headroom_direct_clients declares monitoring on every server, backups on every primary
and a pool per cron group. Sizes are chosen so that every demand fits its server's
memory: the plan of a generated fleet has no problems.

The same --hosts and --seed always write the same files. Formats:

* json (default): hosts.json and group_vars/*.json. Ansible reads JSON with its JSON
  parser, several times faster than its YAML parser: on ten thousand hosts, seconds
  instead of most of a minute.
* yaml: the same inventory as hosts.yml and group_vars/*.yml, to compare.

--layout host_vars moves each host's variables from the hosts file to
host_vars/<host>.<format> (the shape of inventories/example).
"""

import argparse
import json
import random
import re
import shutil
import sys
from pathlib import Path

#: Server sizes (memory, CPU choices) and PgBouncer host sizes (memory, CPUs).
SERVER_SIZES = (("8GB", (2, 4)), ("16GB", (4,)), ("32GB", (4, 8)), ("64GB", (8, 16)))
PGBOUNCER_SIZES = (("4GB", 2), ("8GB", 4))
POSTGRESQL_VERSIONS = (15, 16, 17)
DOMAIN = "fleet.internal"

#: Strings YAML reads back as the same string when written bare.
PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n", "null"}


def plan_fleet(hosts, rng):
    """The fleet as data: host -> its variables, group -> its hosts, group -> its variables."""
    host_vars = {}
    groups = {"postgresql": [], "pgbouncer": [], "cron": []}
    group_vars = {
        "all": {"headroom_direct_clients": []},
        "postgresql": {"postgresql_tuning_profile": "oltp", "postgresql_tuning_storage": "ssd"},
        "pgbouncer": {"pgbouncer_pool_mode": "transaction"},
    }
    clients = group_vars["all"]["headroom_direct_clients"]
    width = len(str(max(1, hosts // 3)))
    number = 0
    while len(host_vars) < hosts:
        number += 1
        cluster = f"c{number:0{width}d}"
        standbys, apps, crons = rng.choice((0, 1, 1, 2)), rng.randint(2, 6), rng.choice((0, 1, 1, 2))
        memory, cpu_choices = rng.choice(SERVER_SIZES)
        cpus, version = rng.choice(cpu_choices), rng.choice(POSTGRESQL_VERSIONS)
        # The last cluster may be cut short: servers first, then PgBouncer hosts, then cron hosts.
        left = hosts - len(host_vars)
        servers = min(1 + standbys, left)
        apps = min(apps, left - servers)
        crons = min(crons, left - servers - apps)

        primary = f"{cluster}-db1.{DOMAIN}"
        for index in range(servers):
            host = f"{cluster}-db{index + 1}.{DOMAIN}"
            # Standbys as large as their primary: parity gives them its max_connections.
            host_vars[host] = {"headroom_memory": memory, "headroom_cpus": cpus, "headroom_postgresql_version": version}
            if index:
                host_vars[host]["postgresql_primary"] = primary
            groups["postgresql"].append(host)
            clients.append({"name": "monitoring", "target": host, "connections": 3})
        clients.append({"name": "backups", "target": primary, "connections": 2})

        if apps:
            app_group = f"{cluster}_app"
            databases = [{"name": f"{cluster}_app", "host": primary, "users": [f"{cluster}_app", f"{cluster}_admin"]}]
            if servers > 1:
                databases.append(
                    {
                        "name": f"{cluster}_ro",
                        "host": f"{cluster}-db2.{DOMAIN}",
                        "dbname": f"{cluster}_app",
                        "users": [f"{cluster}_reports"],
                        "pool_size": rng.choice((3, 5)),
                    }
                )
            groups[app_group] = []
            group_vars[app_group] = {"pgbouncer_databases": databases}
            # A busy application runs two PgBouncer processes per host (not on the smallest servers).
            if rng.random() < 0.3 and memory != "8GB":
                group_vars[app_group]["pgbouncer_processes"] = 2
        for index in range(apps):
            host = f"{cluster}-app{index + 1}.{DOMAIN}"
            app_memory, app_cpus = rng.choice(PGBOUNCER_SIZES)
            host_vars[host] = {"headroom_memory": app_memory, "headroom_cpus": app_cpus}
            groups["pgbouncer"].append(host)
            groups[app_group].append(host)

        if crons:
            cron_group = f"{cluster}_cron"
            groups[cron_group] = []
            clients.append({"name": f"{cluster} cron pool", "target": primary, "connections": 4, "group": cron_group})
        for index in range(crons):
            host = f"{cluster}-cron{index + 1}.{DOMAIN}"
            host_vars[host] = {"headroom_memory": "2GB", "headroom_cpus": 2}
            groups["cron"].append(host)
            groups[cron_group].append(host)
    return host_vars, groups, group_vars


def scalar(value):
    """A YAML scalar: plain when YAML reads it back as the same string, else JSON (which YAML reads too)."""
    if isinstance(value, str) and PLAIN.match(value) and value.lower() not in YAML_WORDS:
        return value
    return "" if value is None else json.dumps(value)


def to_yaml(value, indent=0):
    """Block YAML for the fleet's dicts, lists and scalars."""
    pad = " " * indent
    if isinstance(value, dict) and value:
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines += [f"{pad}{scalar(key)}:", to_yaml(item, indent + 2)]
            else:
                lines.append(f"{pad}{scalar(key)}: {to_yaml(item)}".rstrip())
        return "\n".join(lines)
    if isinstance(value, list) and value:
        return "\n".join(f"{pad}- {to_yaml(item, indent + 2).lstrip()}" for item in value)
    return scalar(value)


def write(directory, name, data, fmt):
    if fmt == "json":
        (directory / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    else:
        (directory / f"{name}.yml").write_text("---\n" + to_yaml(data) + "\n")


def write_inventory(out, host_vars, groups, group_vars, fmt, layout):
    if out.exists():
        shutil.rmtree(out)
    (out / "group_vars").mkdir(parents=True)
    inline = layout == "inline"
    hosts = {
        "all": {
            "children": {
                group: {"hosts": {host: (host_vars[host] if inline else None) for host in members}}
                for group, members in groups.items()
                if members
            }
        }
    }
    write(out, "hosts", hosts, fmt)
    for group, variables in group_vars.items():
        write(out / "group_vars", group, variables, fmt)
    if not inline:
        (out / "host_vars").mkdir()
        for host, variables in host_vars.items():
            write(out / "host_vars", host, variables, fmt)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--hosts", type=int, required=True, help="number of hosts (at least 1)")
    parser.add_argument("--out", type=Path, required=True, help="inventory directory to write (replaced)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--format", choices=("json", "yaml"), default="json", help="file format (default json)")
    parser.add_argument(
        "--layout", choices=("inline", "host_vars"), default="inline", help="where host variables go (default inline)"
    )
    args = parser.parse_args(argv)
    if args.hosts < 1:
        parser.error(f"--hosts must be at least 1, got {args.hosts}")
    host_vars, groups, group_vars = plan_fleet(args.hosts, random.Random(args.seed))
    write_inventory(args.out, host_vars, groups, group_vars, args.format, args.layout)
    print(
        f"{args.out}: {len(host_vars)} hosts: {len(groups['postgresql'])} PostgreSQL servers, "
        f"{len(groups['pgbouncer'])} PgBouncer hosts, {len(groups['cron'])} cron hosts, "
        f"{len(group_vars['all']['headroom_direct_clients'])} direct clients"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
