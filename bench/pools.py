"""Pool-size sweep: PgBouncer's transaction pool against the throughput of the server behind it.

    bench/pools.py run --size full|smoke --out DIR    sweep, write DIR/pools.json, pools.md and pools.png
    bench/pools.py check DIR                          the files exist and are well-formed

Two containers on a network of their own: the server (Debian 12, PostgreSQL 15, 2 GB like the
lab's db1, tuned with headroom's pg_tune for that size, max_connections above the largest pool) and a client host running PgBouncer
(transaction pooling, SCRAM) and pgbench, as an application host would. The server's CPUs are
limited with ``docker update --cpus`` (1, then 2), so a pool rule is not fitted to one box.
For each CPU limit, workload (pgbench select-only and tpcb-like), scale (10, 100) and client
count (10, 100, 1000), every pool size in POOLS serves the same number of transactions; the
point records tps without the initial connection time, as the storm does.
"""

import json
import os
import sys
import time
from pathlib import Path

from part import logger, main, pgbench_summary, run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder  # noqa: E402

_AnsibleCollectionFinder(paths=[str(ROOT / "collections")])._install()
from ansible_collections.headroom.pg.plugins.filter.pg_config import pg_conf_value  # noqa: E402
from ansible_collections.headroom.pg.plugins.filter.postgresql_sizing import pg_tune  # noqa: E402

NETWORK = "headroom-bench-pools"
SERVER, CLIENT = "headroom-bench-pools-db", "headroom-bench-pools-client"
VERSION = 15
PGBIN = f"/usr/lib/postgresql/{VERSION}/bin"
PASSWORD = "headroom-bench-only"
SERVER_MEMORY = "2g"
SIZES = {
    "full": {"cpus": [1, 2], "workloads": [("select-only", 10), ("select-only", 100), ("tpcb-like", 10), ("tpcb-like", 100)],
             "clients": [10, 100, 1000], "pools": [3, 5, 8, 10, 14, 20, 28, 40],
             "transactions": {"select-only": 20000, "tpcb-like": 3000}},
    # CI: proves the part runs and writes well-formed results; says nothing about the figures.
    "smoke": {"cpus": [2], "workloads": [("select-only", 1)], "clients": [10], "pools": [3, 10],
              "transactions": {"select-only": 500}},
}
POINT_TIMEOUT = 300

#: Pool rules compared in the report: default_pool_size from the server's CPUs.
RULES = {
    "2 x CPUs + 1 (PostgreSQL wiki, headroom before)": lambda cpus: 2 * cpus + 1,
    "20 (the seed's config, PgBouncer's default)": lambda cpus: 20,
    "2 x CPUs + 6": lambda cpus: 2 * cpus + 6,
    "4 x CPUs + 4": lambda cpus: 4 * cpus + 4,
    "4 x CPUs + 6": lambda cpus: 4 * cpus + 6,
    "8 x CPUs": lambda cpus: 8 * cpus,
}


log = logger("pools")


def sh(container, script, check=True, timeout=3600):
    return run(["docker", "exec", container, "bash", "-c", script], check=check, timeout=timeout)


def wait_for_server():
    for _attempt in range(240):
        if sh(SERVER, "runuser -u postgres -- psql -XAtqc 'SELECT 1' 2>/dev/null", check=False).stdout.strip() == "1":
            return
        time.sleep(0.5)
    raise RuntimeError("the bench server did not answer")


def start(scales):
    """Both containers, the tuned server with the bench databases, PgBouncer's files on the client."""
    stop()
    run(["docker", "network", "create", NETWORK])
    for name, memory in ((SERVER, ["--memory", SERVER_MEMORY]), (CLIENT, [])):
        run(["docker", "run", "-d", "--name", name, "--hostname", name, "--network", NETWORK, "--cap-add", "SYS_ADMIN",
             "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
             "--tmpfs", "/tmp", *memory, "headroom/debian:12-baked", "/lib/systemd/systemd"])
    wait_for_server()
    tuned = pg_tune({"memory": SERVER_MEMORY.upper() + "B", "cpus": 2, "version": VERSION, "profile": "oltp"})
    # Room for the largest pool: above the ceiling today's model gives 2 GB (43), which measured
    # memory per connection shows to be far too cautious (bench/memory.py).
    tuned["max_connections"] = max(SIZES["full"]["pools"]) + 10
    conf = "".join(f"{name} = {pg_conf_value(value, name)}\n" for name, value in tuned.items())
    conf += "listen_addresses = '*'\n"
    sh(SERVER, f"cat > /etc/postgresql/{VERSION}/main/conf.d/50-bench.conf <<'EOF'\n{conf}EOF\n"
               f"echo 'host all bench samenet scram-sha-256' >> /etc/postgresql/{VERSION}/main/pg_hba.conf; "
               f"systemctl restart postgresql@{VERSION}-main")
    wait_for_server()
    sh(SERVER, "runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -c \"SET password_encryption = 'scram-sha-256'; "
               f"CREATE ROLE bench LOGIN PASSWORD '{PASSWORD}'\"")
    for scale in scales:
        sh(SERVER, f"runuser -u postgres -- psql -XAtqc 'CREATE DATABASE bench{scale} OWNER bench' && "
                   f"PGPASSWORD={PASSWORD} {PGBIN}/pgbench -h 127.0.0.1 -U bench -i -q -s {scale} bench{scale}")
    verifier = sh(SERVER, "runuser -u postgres -- psql -XAtqc \"SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'\"").stdout.strip()
    databases = "".join(f"bench{scale} = host={SERVER} port=5432 dbname=bench{scale}\n" for scale in scales)
    sh(CLIENT, f"printf '\"bench\" \"%s\"\\n' '{verifier}' > /etc/pgbouncer/userlist.txt && "
               f"cat > /etc/pgbouncer/bench.ini.in <<'EOF'\n[databases]\n{databases}\n[pgbouncer]\n"
               "listen_addr = 127.0.0.1\nlisten_port = 6432\nunix_socket_dir = /tmp\nauth_type = scram-sha-256\n"
               "auth_file = /etc/pgbouncer/userlist.txt\npool_mode = transaction\ndefault_pool_size = POOL\n"
               "max_client_conn = 5000\nlogfile = /tmp/pgbouncer.log\nEOF\n"
               "chown -R postgres:postgres /etc/pgbouncer")


def pgbouncer(pool):
    """PgBouncer restarted with ``pool`` server connections per (database, user) pair."""
    sh(CLIENT, "systemctl stop bench-pgbouncer 2>/dev/null; systemctl reset-failed bench-pgbouncer 2>/dev/null; "
               f"sed 's/POOL/{pool}/' /etc/pgbouncer/bench.ini.in > /etc/pgbouncer/bench.ini && "
               "systemd-run --quiet --unit=bench-pgbouncer --uid=postgres --gid=postgres -p LimitNOFILE=16384 "
               "/usr/sbin/pgbouncer /etc/pgbouncer/bench.ini && "
               "for i in $(seq 100); do [ -S /tmp/.s.PGSQL.6432 ] && exit 0; sleep 0.1; done; exit 1")


def point(workload, scale, clients, pool, transactions):
    pgbouncer(pool)
    per_client = max(2, transactions // clients)
    jobs = 1 if clients < 100 else 4 if clients < 1000 else 8
    mode = "--select-only" if workload == "select-only" else ""
    result = sh(CLIENT, f"ulimit -n 16384; PGPASSWORD={PASSWORD} timeout {POINT_TIMEOUT} {PGBIN}/pgbench -h 127.0.0.1 -p 6432 "
                        f"-U bench --no-vacuum {mode} --client={clients} --jobs={jobs} --transactions={per_client} "
                        f"bench{scale}", check=False, timeout=POINT_TIMEOUT + 60)
    tps, failed = pgbench_summary(result.stdout)
    return {"workload": workload, "scale": scale, "clients": clients, "pool": pool, "exit_code": result.returncode,
            "tps": tps or 0.0, "failed_transactions": failed}


def sweep(size, out):
    scales = sorted({scale for _workload, scale in size["workloads"]})
    log(f"server {SERVER} (PostgreSQL {VERSION}, {SERVER_MEMORY}) and client {CLIENT}; pgbench scales {scales}")
    points = []
    try:
        start(scales)
        for cpus in size["cpus"]:
            run(["docker", "update", "--cpus", str(cpus), SERVER])
            for workload, scale in size["workloads"]:
                for clients in size["clients"]:
                    for pool in size["pools"]:
                        p = {"server_cpus": cpus, **point(workload, scale, clients, pool, size["transactions"][workload])}
                        log(f"  cpus {cpus} {workload}/{scale} {clients:4} clients pool {pool:2}: {p['tps']:.0f} tps, "
                            f"failed {p['failed_transactions']}, exit {p['exit_code']}")
                        points.append(p)
    finally:
        stop()
    results = {"date": time.strftime("%Y-%m-%d"), "size": size, "server_memory": SERVER_MEMORY,
               "postgresql": VERSION, "points": points}
    with open(os.path.join(out, "pools.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    write_report(results, out)


def stop():
    run(["docker", "rm", "-f", SERVER, CLIENT], check=False)
    run(["docker", "network", "rm", NETWORK], check=False)


def best_pools(points):
    """The pool size with the most tps for each (server CPUs, workload, scale, clients)."""
    best = {}
    for p in points:
        key = (p["server_cpus"], p["workload"], p["scale"], p["clients"])
        if key not in best or p["tps"] > best[key]["tps"]:
            best[key] = p
    return best


def write_report(results, out):
    size = results["size"]
    lines = [f"# PgBouncer pool-size sweep ({results['date']})", "",
             f"Server: PostgreSQL {results['postgresql']}, {results['server_memory']}, tuned by pg_tune; PgBouncer and "
             "pgbench on a client container. tps without the initial connection time.", "",
             "| server CPUs | workload | scale | clients | " + " | ".join(f"pool {n}" for n in size["pools"]) + " | best |",
             "| ---: | --- | ---: | ---: | " + " | ".join("---:" for _pool in size["pools"]) + " | ---: |"]
    by_key = {}
    for p in results["points"]:
        by_key.setdefault((p["server_cpus"], p["workload"], p["scale"], p["clients"]), {})[p["pool"]] = p
    best = best_pools(results["points"])
    for key, row in by_key.items():
        cells = " | ".join(f"{row[n]['tps']:.0f}" if n in row else "-" for n in size["pools"])
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {cells} | {best[key]['pool']} |")
    lines += ["", "Each rule's tps as a share of the best pool of its row (linear between measured pool sizes), "
              "lowest and mean over the rows of each server CPU limit:", "",
              "| rule | " + " | ".join(f"{cpus} CPU: lowest | {cpus} CPU: mean" for cpus in size["cpus"]) + " |",
              "| --- | " + " | ".join("---: | ---:" for _cpus in size["cpus"]) + " |"]
    for name, shares in rule_shares(by_key, best).items():
        cells = " | ".join(f"{min(shares[cpus]):.2f} | {sum(shares[cpus]) / len(shares[cpus]):.2f}" for cpus in size["cpus"])
        lines.append(f"| {name} | {cells} |")
    with open(os.path.join(out, "pools.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    plot(results, out)


def tps_at(row, pool):
    """tps of a row at ``pool``, linear between the two measured pool sizes around it."""
    sizes = sorted(row)
    pool = min(max(pool, sizes[0]), sizes[-1])
    below = max(size for size in sizes if size <= pool)
    above = min(size for size in sizes if size >= pool)
    if below == above:
        return row[below]["tps"]
    weight = (pool - below) / (above - below)
    return row[below]["tps"] * (1 - weight) + row[above]["tps"] * weight


def rule_shares(by_key, best):
    """Per rule and server CPU limit, each row's tps under the rule over its best tps."""
    shares = {}
    for name, rule in RULES.items():
        per_cpus = shares.setdefault(name, {})
        for key, row in by_key.items():
            if best[key]["tps"]:
                per_cpus.setdefault(key[0], []).append(tps_at(row, rule(key[0])) / best[key]["tps"])
    return shares


def plot(results, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(p["workload"], p["scale"]) for p in results["points"]})
    fig, axes = plt.subplots(1, len(combos), figsize=(5 * len(combos), 4), squeeze=False)
    for ax, (workload, scale) in zip(axes[0], combos):
        lines = sorted({(p["server_cpus"], p["clients"]) for p in results["points"] if (p["workload"], p["scale"]) == (workload, scale)})
        for cpus, clients in lines:
            series = sorted((p["pool"], p["tps"]) for p in results["points"]
                            if (p["workload"], p["scale"], p["server_cpus"], p["clients"]) == (workload, scale, cpus, clients))
            ax.plot([s[0] for s in series], [s[1] for s in series], marker="o",
                    linestyle="-" if cpus == max(c for c, _clients in lines) else "--", label=f"{cpus} CPU, {clients} clients")
        ax.set_title(f"{workload}, scale {scale}")
        ax.set_xlabel("default_pool_size")
        ax.set_ylabel("tps")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "pools.png"), dpi=90)
    plt.close(fig)


def check(out):
    problems = []
    try:
        with open(os.path.join(out, "pools.json"), encoding="utf-8") as handle:
            results = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"pools check failed: {error}")
        return 1
    size = results["size"]
    expected = len(size["cpus"]) * len(size["workloads"]) * len(size["clients"]) * len(size["pools"])
    if len(results["points"]) != expected:
        problems.append(f"{len(results['points'])} points, expected {expected}")
    problems += [f"cpus {p['server_cpus']} {p['workload']}/{p['scale']} {p['clients']} clients pool {p['pool']}: no tps"
                 for p in results["points"] if not p["tps"]]
    for name in ("pools.md", "pools.png"):
        if not os.path.isfile(os.path.join(out, name)) or os.path.getsize(os.path.join(out, name)) == 0:
            problems.append(f"{name} missing or empty")
    if problems:
        print("pools check failed:\n  " + "\n  ".join(problems))
        return 1
    print(f"pools check: {out} holds well-formed results")
    return 0


if __name__ == "__main__":
    sys.exit(main(__doc__, SIZES, sweep, check))
