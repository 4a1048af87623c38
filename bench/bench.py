"""headroom benchmarks on the lab: connection storm, restart under load, Ansible cost.

    bench/bench.py run --size full|smoke --out DIR    run every benchmark, write DIR/results.*
    bench/bench.py check DIR                          fail unless DIR holds well-formed results
    bench/bench.py report DIR                         rewrite the table and plots from results.json

Everything runs for real: PostgreSQL, PgBouncer and pgbench in the lab container db1
(pgbench beside the server, over TCP on 127.0.0.1 like every client of the
setups below, so each one pays the same SCRAM login), ansible-playbook from this checkout.
Setups of the connection storm (bench/README.md says why each one exists):
  a  the distribution's default postgresql.conf, direct          cluster 15/bench, port 5433
  b  a + max_connections = clients + 100 by hand, direct          cluster 15/bench, port 5433
  c  a behind the seed's PgBouncer example (bench/seed-pgbouncer.ini)           port 6433
  d  what site.yml writes: headroom's PostgreSQL and PgBouncer    cluster 15/main, port 6432
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
DB = "headroom-lab-db1"
PG_VERSION = "15"
PGBIN = f"/usr/lib/postgresql/{PG_VERSION}/bin"
SOCKET = "/var/run/postgresql"
PASSWORD = "headroom-bench-only"
SETUPS = {
    "a": {"label": "a: distro default, direct", "port": 5433, "cluster": "bench"},
    "b": {"label": "b: max_connections = clients + 100, direct", "port": 5433, "cluster": "bench"},
    "c": {"label": "c: seed PgBouncer example", "port": 6433, "cluster": "bench"},
    "d": {"label": "d: headroom (site.yml)", "port": 6432, "cluster": "main"},
}
SIZES = {
    # Per point: transactions shared among its clients, counted after all of them logged in.
    "full": {
        # (workload, scale) pairs: both workloads on both scales.
        "workloads": [("select-only", 10), ("select-only", 100), ("tpcb-like", 10), ("tpcb-like", 100)],
        "clients": [10, 100, 1000, 5000],
        # Per point, shared among the clients: about 10-30 s at the lab's rate for each workload.
        "transactions": {"select-only": 20000, "tpcb-like": 3000},
        "restart_seconds": 120,
        "restart_clients": 100,
        # 1 and 8 first: their no-op reruns are the ones the targets compare.
        "site_hosts": [1, 8, 4],
        "plan_hosts": [100, 1000, 10000],
    },
    # CI: proves every stage runs and writes well-formed results; says nothing about speed.
    "smoke": {
        "workloads": [("select-only", 1)],
        "clients": [10, 150],
        "transactions": {"select-only": 1500},
        "restart_seconds": 40,  # the restart starts at 10 s and took 10-18 s on the lab
        "restart_clients": 10,
        "site_hosts": [],  # fresh hosts install packages: minutes, not a smoke test
        "plan_hosts": [100],
    },
}
# Each client runs at least this many transactions; a point gives up after POINT_TIMEOUT
# seconds (plus 0.04 s per client for logging in) and is recorded as timed out.
MIN_TRANSACTIONS_PER_CLIENT = 2
POINT_TIMEOUT = 240
ALL_SCALES = sorted({scale for size in SIZES.values() for _workload, scale in size["workloads"]})
# Connection storm points with at most this many clients give the box's ceiling (best direct tps).
CEILING_MAX_CLIENTS = 100


def log(message):
    print(f"[bench {datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def run(argv, timeout=None, check=True, env=None):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def sh(script, timeout=1800, check=True, container=DB):
    """Run a bash script in a lab container, as root."""
    return run(["docker", "exec", container, "bash", "-c", script], timeout=timeout, check=check)


def psql(sql, port=5432, db="template1", check=True):
    """As the superuser by peer over the socket; template1 because PgBouncer's pg_hba lines
    for the database postgres (users: a count, so "all") ask every user for a password."""
    return sh(f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -h {SOCKET} -p {port} -d {db} -c {quote(sql)}", check=check).stdout.strip()


def quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


def ansible_env():
    env = dict(os.environ)
    env["PATH"] = os.path.join(ROOT, ".venv", "bin") + os.pathsep + env["PATH"]
    env["ANSIBLE_CONFIG"] = os.path.join(ROOT, "ansible.cfg")
    env["ANSIBLE_FORCE_COLOR"] = "false"
    return env


def playbook(args, timeout=3600):
    """Run ansible-playbook from the checkout; returns wall and controller CPU seconds, recap totals, task count, output."""
    start, cpu_before = time.monotonic(), controller_cpu()
    result = subprocess.run(
        ["ansible-playbook", *args], capture_output=True, text=True, timeout=timeout, env=ansible_env(), cwd=ROOT, check=False
    )
    seconds, cpu = time.monotonic() - start, controller_cpu() - cpu_before
    if result.returncode != 0:
        raise RuntimeError(f"ansible-playbook {' '.join(args)} failed:\n{result.stdout[-5000:]}\n{result.stderr[-3000:]}")
    recap = {"ok": 0, "changed": 0, "failed": 0, "skipped": 0, "unreachable": 0}
    for match in re.finditer(r"^\S+\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", result.stdout, re.M):
        ok, changed, unreachable, failed, skipped = map(int, match.groups())
        recap["ok"] += ok
        recap["changed"] += changed
        recap["unreachable"] += unreachable
        recap["failed"] += failed
        recap["skipped"] += skipped
    tasks = len(re.findall(r"^TASK \[", result.stdout, re.M))
    return {"seconds": round(seconds, 1), "controller_cpu_s": round(cpu, 1), "recap": recap, "tasks": tasks}, result.stdout


def containers_cpu(names):
    """CPU seconds the lab containers have used so far (cgroup v1 cpuacct, as Docker's cgroupfs driver lays it out)."""
    total = 0
    for name in names:
        container = run(["docker", "inspect", "-f", "{{.Id}}", name]).stdout.strip()
        with open(f"/sys/fs/cgroup/cpuacct/docker/{container}/cpuacct.usage", encoding="utf-8") as handle:
            total += int(handle.read())
    return total / 1e9


def controller_cpu():
    """CPU seconds (user + system) of this process's finished children: ansible-playbook and its
    forks, which it waits for. Module runs in the lab containers are not counted."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- lab and inventories


def write_inventory(directory, hosts, groups, overlay=None, fresh_fleet=False):
    """An inventory of lab containers with the lab's group_vars (plus an overlay for group pgbouncer).
    fresh_fleet: hosts other than the lab's, so the lab's direct clients (they name headroom-lab-db1)
    are left out; fleet_plan would refuse a client whose target is not in the inventory."""
    os.makedirs(directory, exist_ok=True)
    shutil.copytree(os.path.join(ROOT, "inventories", "lab", "group_vars"), os.path.join(directory, "group_vars"), dirs_exist_ok=True)
    if fresh_fleet:
        every = os.path.join(directory, "group_vars", "all.yml")
        with open(every, encoding="utf-8") as handle:
            lab_vars = yaml.safe_load(handle)
        lab_vars.pop("headroom_direct_clients", None)
        with open(every, "w", encoding="utf-8") as handle:
            handle.write("---\n" + yaml.safe_dump(lab_vars, default_flow_style=False))
    lines = ["---", "all:", "  children:"]
    for group in groups:
        lines += [f"    {group}:", "      hosts:"] + [f"        {host}:" for host in hosts]
    with open(os.path.join(directory, "hosts.yml"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    if overlay:
        with open(overlay, encoding="utf-8") as src, open(os.path.join(directory, "group_vars", "pgbouncer.yml"), "w", encoding="utf-8") as dst:
            dst.write(src.read())
    return directory


def lab_containers(names, memory, state, workdir):
    """Start (state=started, fresh) or remove (state=absent) extra lab containers with tests/lab/up.yml and down.yml."""
    spec = os.path.join(workdir, f"lab-{len(names)}.json")
    with open(spec, "w", encoding="utf-8") as handle:
        json.dump({
            "lab_hosts": [{"name": n, "image": "headroom/debian:12-baked", "memory": memory, "groups": ["postgresql", "pgbouncer"]} for n in names],
            "lab_inventory": os.path.join(workdir, f"lab-{len(names)}-hosts.yml"),
        }, handle)
    playbook(["tests/lab/down.yml", "-e", f"@{spec}"])
    if state == "started":
        playbook(["tests/lab/up.yml", "-e", f"@{spec}"])


# ---------------------------------------------------------------- connection storm


def prepare_storm(size, workdir):
    """Lab up; d through site.yml; the bench role and databases in both clusters; seed PgBouncer ready."""
    log("lab: tests/lab/up.yml, then site.yml on the lab as `make lab` runs it")
    playbook(["tests/lab/up.yml"])
    # A fresh lab has no PostgreSQL yet: the bench databases need the lab's own converge first.
    playbook(["site.yml"])
    sh(f"pg_lsclusters -h | grep -q '^{PG_VERSION} bench ' && pg_ctlcluster {PG_VERSION} bench stop || true; pg_ctlcluster {PG_VERSION} main start || true")
    log("d: bench role and databases in 15/main")
    for cluster_port in (5432,):
        create_bench_databases(cluster_port, [scale for _workload, scale in size["workloads"]])
    log("d: site.yml with bench/lab-vars.yml (headroom's PostgreSQL and PgBouncer for the bench databases)")
    inventory = write_inventory(os.path.join(workdir, "inventory-d"), [DB], ["postgresql", "pgbouncer"], os.path.join(BENCH, "lab-vars.yml"))
    site, _output = playbook(["-i", inventory, "site.yml"])
    log(f"d: site.yml took {site['seconds']} s, changed={site['recap']['changed']}")
    if not sh(f"pg_lsclusters -h | grep -q '^{PG_VERSION} bench '", check=False).returncode == 0:
        log("a/b/c: creating cluster 15/bench with the distribution's defaults")
        sh(f"pg_createcluster {PG_VERSION} bench --port 5433 >/dev/null")
    sh(f"mkdir -p /etc/postgresql/{PG_VERSION}/bench/conf.d; pg_ctlcluster {PG_VERSION} bench start")
    create_bench_databases(5433, [scale for _workload, scale in size["workloads"]])
    # The seed's example uses a userlist: the bench role's SCRAM verifier, as stored by the server.
    verifier = psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'bench'", port=5433)
    sh(f"printf '\"bench\" \"%s\"\\n' {quote(verifier)} > /etc/postgresql/bench-seed-userlist.txt; "
       "chown postgres:postgres /etc/postgresql/bench-seed-userlist.txt; chmod 0640 /etc/postgresql/bench-seed-userlist.txt")
    run(["docker", "cp", os.path.join(BENCH, "seed-pgbouncer.ini"), f"{DB}:/etc/postgresql/bench-seed-pgbouncer.ini"])
    sh(f"pg_ctlcluster {PG_VERSION} bench stop")
    return site


def create_bench_databases(port, scales):
    psql("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench') THEN "
         "SET LOCAL password_encryption = 'scram-sha-256'; "
         f"CREATE ROLE bench LOGIN PASSWORD '{PASSWORD}'; END IF; END$$", port=port)
    # Every bench database exists (bench/lab-vars.yml puts each behind PgBouncer); only the
    # scales of this size are initialised.
    for scale in ALL_SCALES:
        name = f"bench{scale}"
        if psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'", port=port) == "0":
            psql(f"CREATE DATABASE {name} OWNER bench", port=port)
    for scale in scales:
        name = f"bench{scale}"
        # pgbench --initialize makes the primary keys last: without them it did not finish.
        have = psql("SELECT count(*) FROM pgbench_branches WHERE to_regclass('pgbench_accounts_pkey') IS NOT NULL",
                    port=port, db=name, check=False)  # empty when the table is missing
        if have != str(scale):
            log(f"pgbench --initialize --scale={scale} on port {port}")
            sh(f"PGPASSWORD={PASSWORD} {PGBIN}/pgbench -h 127.0.0.1 -p {port} -U bench -i -q -s {scale} {name}", timeout=3600)


def switch_setup(setup, clients):
    """Make exactly one setup live: the right cluster running with the right config, the right PgBouncer."""
    if setup == "d":
        sh(f"systemctl stop bench-seed-pgbouncer 2>/dev/null; pg_ctlcluster {PG_VERSION} bench stop 2>/dev/null; "
           f"pg_ctlcluster {PG_VERSION} main start 2>/dev/null; systemctl start pgbouncer; true")
        return
    by_hand = f"/etc/postgresql/{PG_VERSION}/bench/conf.d/90-by-hand.conf"
    config = f"echo 'max_connections = {clients + 100}' > {by_hand}" if setup == "b" else f"rm -f {by_hand}"
    sh(f"systemctl stop pgbouncer bench-seed-pgbouncer 2>/dev/null; pg_ctlcluster {PG_VERSION} main stop 2>/dev/null; "
       f"{config}; pg_ctlcluster {PG_VERSION} bench restart || pg_ctlcluster {PG_VERSION} bench start")
    if setup == "c":
        # The seed ran PgBouncer from its own unit with systemd's default limits; so does the bench.
        sh("systemctl reset-failed bench-seed-pgbouncer 2>/dev/null; "
           "systemd-run --quiet --unit=bench-seed-pgbouncer --uid=postgres --gid=postgres "
           "/usr/sbin/pgbouncer /etc/postgresql/bench-seed-pgbouncer.ini || exit 1; "
           "for i in $(seq 100); do [ -S /var/run/postgresql/.s.PGSQL.6433 ] && exit 0; sleep 0.1; done; exit 1")


SAMPLER = r"""
# Every half second: client backends of the live cluster (pg_stat_activity, as the superuser over
# the socket, which a full server still lets in), and the memory of the PostgreSQL and
# PgBouncer units from their cgroup v1 memory controller: memory.usage_in_bytes minus the
# file page cache (active_file + inactive_file), i.e. anonymous + shared memory + kernel
# memory such as page tables, each counted once however many processes map it.
mem() {
  local cg; cg=$(systemctl show -p ControlGroup --value "$1" 2>/dev/null)
  [ -n "$cg" ] || { echo 0; return; }
  # With the host's cgroup namespace, systemd's ControlGroup is the full /docker/<id>/... path.
  local file=/sys/fs/cgroup/memory${cg}/memory.stat
  local usage; usage=$(cat "${file%.stat}.usage_in_bytes" 2>/dev/null) || { echo 0; return; }
  awk -v u="$usage" '$1 == "total_active_file" || $1 == "total_inactive_file" {u -= $2} END {print u}' "$file"
}
while [ -e /tmp/bench/sampling ]; do
  b=$(runuser -u postgres -- psql -XAtq -h /var/run/postgresql -p "$PGPORT_SERVER" -d template1 \
      -c "SELECT count(*) - 1 FROM pg_stat_activity WHERE backend_type = 'client backend'" 2>/dev/null || echo -1)
  echo "$(date +%s.%N) ${b:--1} $(mem "$PG_UNIT") $(mem "$PGB_UNIT")" >> /tmp/bench/samples
  sleep 0.5
done
"""


def storm_point(setup, workload, scale, clients, transactions):
    """One pgbench run; returns the point's measurements."""
    switch_setup(setup, clients)
    cluster = SETUPS[setup]["cluster"]
    server_port = 5432 if cluster == "main" else 5433
    pgb_unit = {"c": "bench-seed-pgbouncer.service", "d": "pgbouncer.service"}.get(setup, "none.service")
    jobs = 1 if clients < 100 else 4 if clients < 1000 else 8
    mode = "--select-only" if workload == "select-only" else ""
    # A fixed number of transactions, not --time: pgbench's --time also runs while its clients
    # log in (SCRAM, one by one per thread), which on a busy box can take longer than the run.
    # tps is counted without the login time either way.
    per_client = max(MIN_TRANSACTIONS_PER_CLIENT, transactions // clients)
    limit = POINT_TIMEOUT + clients // 25
    script = (
        "rm -rf /tmp/bench; mkdir -p /tmp/bench; touch /tmp/bench/sampling; ulimit -n $(ulimit -Hn); "
        f"export PGPORT_SERVER={server_port} PG_UNIT=postgresql@{PG_VERSION}-{cluster}.service PGB_UNIT={pgb_unit}; "
        f"( {SAMPLER} ) & sampler=$!; "
        f"cd /tmp/bench; PGPASSWORD={PASSWORD} timeout {limit} {PGBIN}/pgbench -h 127.0.0.1 -p {SETUPS[setup]['port']} -U bench "
        f"--no-vacuum {mode} --client={clients} --jobs={jobs} --transactions={per_client} --progress=1 --log --log-prefix=/tmp/bench/txn "
        f"bench{scale} > /tmp/bench/stdout 2> /tmp/bench/stderr; echo $? > /tmp/bench/rc; "
        "rm -f /tmp/bench/sampling; wait $sampler"
    )
    started = time.monotonic()
    sh(script, timeout=limit + 120)
    wall = time.monotonic() - started
    out = sh("cat /tmp/bench/stdout").stdout
    err = sh("cat /tmp/bench/stderr").stdout
    rc = int(sh("cat /tmp/bench/rc").stdout.strip() or -1)
    latencies = [int(x) for x in sh("cat /tmp/bench/txn.* 2>/dev/null | awk '$3 ~ /^[0-9]+$/ {print $3}'").stdout.split()]
    failed_in_log = int(sh("cat /tmp/bench/txn.* 2>/dev/null | awk '$3 == \"failed\"' | wc -l").stdout.strip() or 0)
    samples = [line.split() for line in sh("cat /tmp/bench/samples 2>/dev/null || true").stdout.splitlines()]
    latencies.sort()
    stalls = progress_stalls(err)
    point = {
        "setup": setup,
        "workload": workload,
        "scale": scale,
        "clients": clients,
        "transactions_per_client": per_client,
        "timed_out": rc == 124,
        "exit_code": rc,
        "tps": number(r"tps = ([\d.]+) \(without initial connection time\)", out),
        "transactions": int(number(r"number of transactions actually processed: (\d+)", out) or 0),
        "latency_mean_ms": round(sum(latencies) / len(latencies) / 1000, 3) if latencies else None,
        "latency_p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] / 1000, 3) if latencies else None,
        "failed_transactions": int(number(r"number of failed transactions: (\d+)", out) or failed_in_log),
        "connection_errors": len(re.findall(r"connection to server .* failed|FATAL|too many|could not connect|no more connections allowed", err)),
        "clients_aborted": len(re.findall(ABORTED, err)),
        "initial_connection_ms": number(r"initial connection time = ([\d.]+) ms", out),
        "peak_server_backends": max((int(s[1]) for s in samples), default=None),
        "peak_postgresql_memory_mb": round(max((int(s[2]) for s in samples), default=0) / 2**20, 1),
        "peak_pgbouncer_memory_mb": round(max((int(s[3]) for s in samples), default=0) / 2**20, 1) if setup in "cd" else None,
        "longest_stall_s": stalls,
        "wall_s": round(wall, 1),
        "errors_sample": sorted(set(re.sub(r"client \d+", "client N", line) for line in err.splitlines() if "progress:" not in line))[:5],
    }
    if point["tps"] is None and point["transactions"] == 0:
        point["tps"] = 0.0
    return point


# pgbench 15: "client 3 aborted while establishing connection", "client 3 script 0 aborted in command 8 ...".
ABORTED = r"client \d+ (?:script \d+ )?aborted"


def number(pattern, text):
    match = re.search(pattern, text)
    return float(match.group(1)) if match else None


def progress_stalls(stderr):
    """Longest run of --progress seconds with (near) zero tps, in seconds."""
    longest = current = 0
    for match in re.finditer(r"progress: [\d.]+ s, ([\d.]+) tps", stderr):
        current = current + 1 if float(match.group(1)) < 1 else 0
        longest = max(longest, current)
    return longest


def connection_storm(size, save_points):
    points = []
    # Workload-major: each workload's four setups are measured close together in time, and a
    # run cut short keeps whole workloads (saved after every point).
    for workload, scale in size["workloads"]:
        for setup in SETUPS:
            for clients in size["clients"]:
                log(f"storm {setup} {workload} scale {scale} clients {clients}")
                point = storm_point(setup, workload, scale, clients, size["transactions"][workload])
                log(f"  tps {point['tps']} p99 {point['latency_p99_ms']} ms failed {point['failed_transactions']} "
                    f"conn errors {point['connection_errors']} backends {point['peak_server_backends']} "
                    f"pg {point['peak_postgresql_memory_mb']} MB pgb {point['peak_pgbouncer_memory_mb']} MB")
                points.append(point)
                save_points(points, with_ceilings(points))
    return points, with_ceilings(points)


def with_ceilings(points):
    """Per workload and scale, the best clean direct tps at low client counts; each point's ratio to it."""
    ceilings = {}
    for p in points:
        if p["setup"] in "ab" and p["clients"] <= CEILING_MAX_CLIENTS and p["failed_transactions"] == 0 and p["connection_errors"] == 0:
            key = f"{p['workload']}/{p['scale']}"
            ceilings[key] = max(ceilings.get(key, 0), p["tps"] or 0)
    for p in points:
        ceiling = ceilings.get(f"{p['workload']}/{p['scale']}")
        p["ratio_to_ceiling"] = round(p["tps"] / ceiling, 3) if ceiling and p["tps"] is not None else None
    return ceilings


# ---------------------------------------------------------------- restart under load


def restart_under_load(size, workdir):
    """pgbench through headroom's PgBouncer while playbooks/restart.yml restarts PostgreSQL."""
    switch_setup("d", 0)
    seconds, clients = size["restart_seconds"], size["restart_clients"]
    scale = size["workloads"][0][1]
    # A restart-only setting headroom does not manage, changed by hand and reloaded: a pending restart.
    psql("ALTER SYSTEM SET track_activity_query_size = '2kB'")
    psql("SELECT pg_reload_conf()")
    time.sleep(1)
    pending = psql("SELECT count(*) FROM pg_settings WHERE pending_restart")
    start_before = psql("SELECT pg_postmaster_start_time()")
    script = (
        "rm -rf /tmp/bench; mkdir -p /tmp/bench; ulimit -n $(ulimit -Hn); cd /tmp/bench; "
        f"PGPASSWORD={PASSWORD} {PGBIN}/pgbench -h 127.0.0.1 -p 6432 -U bench --no-vacuum --client={clients} --jobs=2 "
        f"--time={seconds} --progress=1 --log --log-prefix=/tmp/bench/txn --max-tries=1 bench{scale} "
        "> /tmp/bench/stdout 2> /tmp/bench/stderr; echo $? > /tmp/bench/rc"
    )
    bench = subprocess.Popen(["docker", "exec", DB, "bash", "-c", script])
    time.sleep(10)
    inventory = os.path.join(workdir, "inventory-d")
    log("restart: playbooks/restart.yml under load")
    restart, _output = playbook(["-i", inventory, "playbooks/restart.yml"])
    # The restart only counts when pgbench was still running when the playbook ended.
    restart_under_load = bench.poll() is None
    bench.wait(timeout=seconds + 300)
    psql("ALTER SYSTEM RESET track_activity_query_size")
    start_after = psql("SELECT pg_postmaster_start_time()")
    pending_after = psql("SELECT count(*) FROM pg_settings WHERE pending_restart")
    out, err = sh("cat /tmp/bench/stdout").stdout, sh("cat /tmp/bench/stderr").stdout
    gaps = longest_log_gap()
    result = {
        "clients": clients,
        "scale": scale,
        "workload": "tpcb-like",
        "seconds": seconds,
        "pending_restart_settings_before": int(pending),
        "pending_restart_settings_after": int(pending_after),
        "postmaster_restarted": start_before != start_after,
        "restart_finished_while_pgbench_ran": restart_under_load,
        "restart_playbook_s": restart["seconds"],
        "exit_code": int(sh("cat /tmp/bench/rc").stdout.strip() or -1),
        "tps": number(r"tps = ([\d.]+) \(without initial connection time\)", out),
        "transactions": int(number(r"number of transactions actually processed: (\d+)", out) or 0),
        "failed_transactions": int(number(r"number of failed transactions: (\d+)", out) or 0),
        "clients_aborted": len(re.findall(ABORTED, err)),
        "longest_stall_progress_s": progress_stalls(err),
        "longest_gap_between_commits_s": gaps,
        "errors_sample": sorted(set(re.sub(r"client \d+", "client N", line) for line in err.splitlines() if "progress:" not in line))[:5],
        "progress": [float(m.group(1)) for m in re.finditer(r"progress: [\d.]+ s, ([\d.]+) tps", err)],
    }
    # Aborted clients stop running transactions: they count as failed for this benchmark.
    log(f"restart: restarted {result['postmaster_restarted']} failed {result['failed_transactions']} "
        f"aborted clients {result['clients_aborted']} longest gap {gaps} s")
    return result


def longest_log_gap():
    """Longest time between two consecutive transaction ends over all clients (per-transaction logs)."""
    ends = sh("cat /tmp/bench/txn.* 2>/dev/null | awk '{printf \"%d.%06d\\n\", $5, $6}'").stdout.split()
    times = sorted(float(t) for t in ends)
    return round(max((b - a for a, b in zip(times, times[1:])), default=0.0), 3)


# ---------------------------------------------------------------- Ansible cost


def plan_cost(size, workdir, results, save):
    """plan.yml on generated fleets: no host is contacted."""
    for count in size["plan_hosts"]:
        directory = os.path.join(workdir, f"fleet-{count}")
        generator = os.environ.get("HEADROOM_FLEET_INVENTORY", os.path.join(ROOT, "scripts", "fleet-inventory.py"))
        run([sys.executable, generator, "--hosts", str(count), "--out", directory], timeout=600)
        log(f"ansible: plan.yml on {count} generated hosts")
        start = time.monotonic()
        proc = subprocess.run(["ansible-playbook", "-i", directory, "playbooks/plan.yml"], capture_output=True, text=True,
                              env=ansible_env(), cwd=ROOT, timeout=3600, check=False)
        seconds = round(time.monotonic() - start, 1)
        results["plan"].append({
            "hosts": count, "seconds": seconds, "exit_code": proc.returncode,
            "tasks": len(re.findall(r"^TASK \[", proc.stdout, re.M)),
            "tail": proc.stdout.strip().splitlines()[-3:] if proc.returncode else [],
        })
        log(f"  {seconds} s, exit {proc.returncode}")
        save()


def site_cost(size, workdir, results, save):
    """site.yml on fresh lab hosts: a first converge, then a rerun that must change nothing."""
    if not size["site_hosts"]:
        return
    every_name = [f"headroom-lab-bench{i}" for i in range(1, max(size["site_hosts"]) + 1)]
    for count in size["site_hosts"]:
        names = every_name[:count]
        log(f"ansible: {count} fresh lab hosts")
        lab_containers(every_name, "1g", "absent", workdir)
        lab_containers(names, "1g", "started", workdir)
        # A first converge starts with no cached facts, as on a new fleet.
        for name in every_name:
            cached = os.path.join(ROOT, ".cache", "facts", name)
            if os.path.exists(cached):
                os.remove(cached)
        inventory = write_inventory(os.path.join(workdir, f"inventory-site-{count}"), names, ["postgresql", "pgbouncer"], fresh_fleet=True)
        first, _output = playbook(["-i", inventory, "site.yml"])
        hosts_before = containers_cpu(names)
        noop, _output = playbook(["-i", inventory, "site.yml"])
        # The modules run in the containers, on the same 2 cores as the controller: their CPU is the
        # other half of what a no-op costs (the containers' cgroups, the servers' own work included).
        noop["hosts_cpu_s"] = round(containers_cpu(names) - hosts_before, 1)
        log(f"  first {first['seconds']} s ({first['tasks']} tasks), no-op {noop['seconds']} s changed={noop['recap']['changed']}")
        results["site"].append({"hosts": count, "first": first, "noop": noop})
        save()
    lab_containers(every_name, "1g", "absent", workdir)


# ---------------------------------------------------------------- machine, report, check


def machine():
    versions = sh(f"{PGBIN}/postgres --version; pgbouncer --version | head -1; {PGBIN}/pgbench --version; "
                  ". /etc/os-release; echo $PRETTY_NAME").stdout.strip().splitlines()
    cpu = open("/proc/cpuinfo", encoding="utf-8").read()
    model = re.search(r"model name\s*:\s*(.*)", cpu)
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model.group(1) if model else platform.processor(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "db1_memory_limit": "2g",
        "lab_versions": versions,
        "ansible": run(["ansible", "--version"], env=ansible_env()).stdout.splitlines()[0],
        "python": platform.python_version(),
    }


def write_report(out):
    with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    lines = [f"# headroom benchmark {results['date']} (size {results['size']})", ""]
    m = results["machine"]
    lines += [f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB, kernel {m['kernel']}; "
              f"db1 limited to {m['db1_memory_limit']}; {'; '.join(m['lab_versions'])}; {m['ansible']}.", ""]
    lines += ["## Connection storm", ""]
    if not results.get("storm"):
        lines += ["Not measured in this run."]
    else:
        lines += [
            f"Transactions per point: {results['storm_transactions']} (at least {MIN_TRANSACTIONS_PER_CLIENT} per client), "
            "counted after every client logged in. Ceiling: best direct tps with at most "
            f"{CEILING_MAX_CLIENTS} clients: " + ", ".join(f"{k} {v:.0f} tps" for k, v in results.get("ceilings", {}).items()) + ".", "",
            "| setup | workload | scale | clients | tps | ratio to ceiling | mean ms | p99 ms | failed txns | conn errors "
            "| peak backends | PG MB | PgBouncer MB |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in results.get("storm", []):
        lines.append(f"| {p['setup']} | {p['workload']} | {p['scale']} | {p['clients']} | {fmt(p['tps'], 0)} | {fmt(p['ratio_to_ceiling'], 2)} | "
                     f"{fmt(p['latency_mean_ms'], 1)} | {fmt(p['latency_p99_ms'], 1)} | {p['failed_transactions']} | {p['connection_errors']} | "
                     f"{fmt(p['peak_server_backends'], 0)} | {fmt(p['peak_postgresql_memory_mb'], 0)} | {fmt(p['peak_pgbouncer_memory_mb'], 0)} |")
    r = results.get("restart") or {}
    lines += ["", "## Restart under load", ""] + (["Not measured in this run."] if not r else [
        f"pgbench ({r['workload']}, {r['clients']} clients, {r['seconds']} s) through headroom's PgBouncer while "
        f"`playbooks/restart.yml` restarted PostgreSQL (postmaster restarted: {r['postmaster_restarted']}, "
        f"playbook {r['restart_playbook_s']} s).", "",
        "| failed transactions | aborted clients | longest stall (progress, s) | longest gap between commits (s) | tps | pgbench exit |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {r['failed_transactions']} | {r['clients_aborted']} | {r['longest_stall_progress_s']} | {r['longest_gap_between_commits_s']} | "
        f"{fmt(r['tps'], 0)} | {r['exit_code']} |"])
    a = results.get("ansible") or {"site": [], "plan": []}
    lines += ["", "## Ansible cost", "",
              "Controller CPU: user + system seconds of ansible-playbook and its forks. Hosts' CPU: what the lab "
              "containers used during the no-op (the modules, psql and the servers' own work), on the same cores. "
              "Task results per host: the no-op's ok + changed + skipped over all hosts, divided by the hosts "
              "(run_once tasks count once). Cores busy: both CPU figures over the no-op's wall time, of the "
              f"machine's {os.cpu_count()}.", "",
              "| playbook | hosts | first converge s | tasks | no-op rerun s | no-op task results per host | "
              "no-op controller CPU s (per host) | no-op hosts' CPU s (per host) | no-op cores busy | no-op changed |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in sorted(a["site"], key=lambda s: s["hosts"]):
        first, noop, hosts = s["first"] or {}, s["noop"], s["hosts"]
        results_per_host = (noop["recap"]["ok"] + noop["recap"]["changed"] + noop["recap"]["skipped"]) / hosts
        controller = noop.get("controller_cpu_s")
        hosts_cpu = noop.get("hosts_cpu_s")
        lines.append(f"| site.yml | {hosts} | {fmt(first.get('seconds'), 1)} | {first.get('tasks', noop['tasks'])} | "
                     f"{noop['seconds']} | {fmt(results_per_host, 1)} | "
                     f"{fmt(controller, 1)} ({fmt(controller / hosts if controller is not None else None, 1)}) | "
                     f"{fmt(hosts_cpu, 1)} ({fmt(hosts_cpu / hosts if hosts_cpu is not None else None, 1)}) | "
                     f"{fmt((controller + hosts_cpu) / noop['seconds'] if None not in (controller, hosts_cpu) else None, 2)} | "
                     f"{noop['recap']['changed']} |")
    for p in a["plan"]:
        lines.append(f"| plan.yml | {p['hosts']} | {p['seconds']} | {p['tasks']} | - | - | - | - | - | exit {p['exit_code']} |")
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    plot(results, out)


def fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def plot(results, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    storm = results.get("storm", [])
    combos = sorted({(p["workload"], p["scale"]) for p in storm})
    # A run of some parts only (--parts site, say) has no storm to draw.
    for metric, label, name in ([] if not combos else [("tps", "transactions per second", "storm-tps.png"),
                                                       ("latency_p99_ms", "p99 latency (ms)", "storm-p99.png"),
                                                       ("peak_server_backends", "peak server backends", "storm-backends.png")]):
        fig, axes = plt.subplots(1, len(combos), figsize=(5 * len(combos), 4), squeeze=False)
        for ax, (workload, scale) in zip(axes[0], combos):
            for setup, spec in SETUPS.items():
                pts = [p for p in storm if p["setup"] == setup and p["workload"] == workload and p["scale"] == scale]
                xs = [p["clients"] for p in pts]
                ys = [p[metric] if p[metric] is not None else 0 for p in pts]
                ax.plot(xs, ys, marker="o", label=spec["label"])
            if metric == "tps":
                ceiling = results.get("ceilings", {}).get(f"{workload}/{scale}")
                if ceiling:
                    ax.axhline(ceiling, color="grey", linestyle="--", label="box ceiling")
            ax.set_xscale("log")
            ax.set_title(f"{workload}, scale {scale}")
            ax.set_xlabel("clients")
            ax.set_ylabel(label)
        axes[0][0].legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=90)
        plt.close(fig)
    if "restart" not in results:
        return
    fig, ax = plt.subplots(figsize=(8, 3.5))
    progress = results["restart"]["progress"]
    ax.plot(range(1, len(progress) + 1), progress)
    ax.set_xlabel("seconds")
    ax.set_ylabel("tps (pgbench --progress 1)")
    ax.set_title("tps through headroom's PgBouncer while restart.yml restarts PostgreSQL")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "restart.png"), dpi=90)
    plt.close(fig)


def check(out):
    """The result files exist and are well-formed (not a performance check)."""
    problems = []
    for name in ["results.json", "results.md", "storm-tps.png", "storm-p99.png", "storm-backends.png", "restart.png"]:
        path = os.path.join(out, name)
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            problems.append(f"{name} missing or empty")
    if not problems:
        with open(os.path.join(out, "results.json"), encoding="utf-8") as handle:
            results = json.load(handle)
        problems += [f"{name} failed: {message.splitlines()[-1] if message else ''}" for name, message in results.get("errors", {}).items()]
        size = SIZES[results["size"]]
        expected = 4 * len(size["workloads"]) * len(size["clients"])
        if len(results.get("storm", [])) != expected:
            problems.append(f"storm has {len(results['storm'])} points, expected {expected}")
        for p in results.get("storm", []):
            for key in ["tps", "failed_transactions", "connection_errors", "peak_postgresql_memory_mb"]:
                if not isinstance(p.get(key), (int, float)):
                    problems.append(f"storm point {p['setup']}/{p['clients']}: {key} = {p.get(key)!r}")
            if p["setup"] in "cd" and p["clients"] <= 100 and not (p["tps"] and p["latency_p99_ms"]):
                problems.append(f"storm point {p['setup']}/{p['clients']} through PgBouncer has no tps or p99")
        if not results.get("ceilings", {}):
            problems.append("no ceiling: no direct run succeeded")
        if not results.get("restart", {}).get("postmaster_restarted"):
            problems.append("restart: the postmaster did not restart")
        elif not results["restart"]["restart_finished_while_pgbench_ran"]:
            problems.append("restart: pgbench ended before restart.yml did")
        if "ansible" not in results or not results["ansible"]["plan"]:
            problems.append("no Ansible cost measured")
        if len(results.get("ansible", {}).get("site", [])) != len(size["site_hosts"]):
            problems.append("site.yml was not measured on every host count")
        for s in results.get("ansible", {}).get("site", []):
            if s["noop"]["recap"]["changed"] != 0 or s["noop"]["tasks"] == 0:
                problems.append(f"site.yml no-op rerun on {s['hosts']} hosts: changed={s['noop']['recap']['changed']}")
        for p in results.get("ansible", {}).get("plan", []):
            if p["exit_code"] != 0:
                problems.append(f"plan.yml on {p['hosts']} hosts exited {p['exit_code']}")
        with open(os.path.join(out, "results.md"), encoding="utf-8") as handle:
            if handle.read().count("\n| ") < expected:
                problems.append("results.md lacks table rows")
        with open(os.path.join(out, "storm-tps.png"), "rb") as handle:
            if handle.read(8) != b"\x89PNG\r\n\x1a\n":
                problems.append("storm-tps.png is not a PNG")
    if problems:
        print("bench check failed:\n  " + "\n  ".join(problems))
        return 1
    print(f"bench check: {out} holds well-formed results")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--size", choices=sorted(SIZES), default="full")
    run_parser.add_argument("--out", required=True)
    run_parser.add_argument("--parts", default="restart,storm,plan,site",
                            help="comma-separated parts to run; results of other parts already in --out are kept")
    for name in ("check", "report"):
        sub.add_parser(name).add_argument("out")
    args = parser.parse_args()
    if args.command == "check":
        return check(args.out)
    if args.command == "report":
        write_report(args.out)
        return 0
    size = SIZES[args.size]
    os.makedirs(args.out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="headroom-bench-")
    started = time.monotonic()
    results = {}
    previous = os.path.join(args.out, "results.json")
    if os.path.exists(previous):
        with open(previous, encoding="utf-8") as handle:
            results = json.load(handle)
        results.pop("errors", None)
    results.update(date=datetime.date.today().isoformat(), size=args.size, storm_transactions=size["transactions"])
    parts = args.parts.split(",")

    def save():
        # After every part, so a run cut short still leaves what it measured.
        results["total_s"] = round(time.monotonic() - started, 1)
        with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)

    def part(name, function):
        # A part that fails is recorded and the others still run; check() then fails.
        try:
            function()
        except Exception as error:  # noqa: BLE001 - recorded with its message, reported by check
            log(f"{name} failed: {error}")
            results.setdefault("errors", {})[name] = str(error)[-3000:]
        save()

    results["site_for_d"] = prepare_storm(size, workdir)
    results["machine"] = machine()
    results.setdefault("ansible", {"site": [], "plan": []})
    if "plan" in parts:
        results["ansible"]["plan"] = []
    if "site" in parts:
        results["ansible"]["site"] = []
    # The converges of fresh hosts last (the slowest part): a run cut short keeps the most.
    steps = {
        "restart": lambda: results.update(restart=restart_under_load(size, workdir)),
        "storm": lambda: connection_storm(size, lambda points, ceilings: (results.update(storm=points, ceilings=ceilings), save())),
        "plan": lambda: plan_cost(size, workdir, results["ansible"], save),
        "site": lambda: site_cost(size, workdir, results["ansible"], save),
    }
    for name in [name for name in steps if name in parts]:
        part(name, steps[name])
    write_report(args.out)
    log(f"done in {results['total_s']} s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
