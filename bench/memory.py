"""Memory per PostgreSQL connection, measured on each platform of the test matrix.

    bench/memory.py run --size full|smoke --out DIR    measure, write DIR/memory.json and DIR/memory.md
    bench/memory.py check DIR                          the files exist and are well-formed

For each Debian release (12: PostgreSQL 15, 13: 17, forky: 18) a container of its own, from the
baked image and with no memory limit, runs the distribution's cluster with max_connections above
the clients and the default shared_buffers (128MB) and work_mem (4MB). Each workload opens N
connections over the socket with pgbench:

- idle: connected, one SELECT 1 run, then idle (the pgbench script sleeps client-side);
- select-only and tpcb-like: pgbench's built-in scripts, for some seconds;
- catalog: each connection touches every one of a few thousand tables (a plpgsql loop of
  dynamic SELECTs, one transaction each), so its relation and catalog caches hold them all,
  then stays connected.

The memory is the container's cgroup v1 memory controller, read from the machine: usage minus
the file page cache (active_file + inactive_file), as the storm measures PostgreSQL. Shared
buffers are warmed first, so the baseline before each workload already counts them; the cost
of a connection is (peak during the workload - baseline) / N. Beside it, the mean private
memory (USS: Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) of the client backends,
sampled while they are all connected.
"""

import json
import os
import shlex
import sys
import threading
import time

from part import logger, main, run

RELEASES = {"12": 15, "13": 17, "forky": 18}
SIZES = {
    "full": {"releases": ["12", "13", "forky"], "clients": [50, 200], "catalog_clients": [50, 100],
             "scale": 10, "tables": 2000, "seconds": 15},
    # CI: proves the part runs and writes well-formed results; says nothing about the figures.
    "smoke": {"releases": ["12"], "clients": [5], "catalog_clients": [5], "scale": 1, "tables": 50, "seconds": 3},
}
WORKLOADS = ["idle", "select-only", "tpcb-like", "catalog"]
MB = 2**20


log = logger("memory")


class Server:
    """One bench container and its cluster."""

    def __init__(self, release):
        self.release, self.version = release, RELEASES[release]
        self.name = f"headroom-bench-memory-{release}"
        self.bin = f"/usr/lib/postgresql/{self.version}/bin"

    def sh(self, script, check=True, timeout=1800):
        return run(["docker", "exec", self.name, "bash", "-c", script], check=check, timeout=timeout)

    def psql(self, sql, db="postgres"):
        return self.sh(f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -d {db} -c {shlex.quote(sql)}").stdout.strip()

    def start(self, max_connections):
        run(["docker", "rm", "-f", self.name], check=False)
        # forky's systemd needs cgroup v2: its images boot through scripts/cgroup2-init.
        init = (["--cgroupns", "private", f"headroom/debian:{self.release}-baked", "/usr/local/sbin/cgroup2-init"]
                if self.release == "forky" else
                ["--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", f"headroom/debian:{self.release}-baked",
                 "/lib/systemd/systemd"])
        run(["docker", "run", "-d", "--name", self.name, "--hostname", self.name, "--cap-add", "SYS_ADMIN",
             "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp", *init])
        self.id = run(["docker", "inspect", "--format", "{{.Id}}", self.name]).stdout.strip()
        self.wait_until_it_answers("PostgreSQL did not answer")
        self.sh(f"printf 'max_connections = {max_connections}\\nlog_connections = off\\n' "
                f"> /etc/postgresql/{self.version}/main/conf.d/90-bench.conf && "
                f"systemctl restart postgresql@{self.version}-main")
        self.wait_until_it_answers(f"PostgreSQL did not come back with max_connections = {max_connections}")

    def wait_until_it_answers(self, failure):
        for _attempt in range(120):
            if self.sh("runuser -u postgres -- psql -XAtqc 'SELECT 1' 2>/dev/null", check=False).stdout.strip() == "1":
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: {failure}")

    def prepare(self, scale, tables):
        self.psql("CREATE DATABASE bench")
        self.sh(f"runuser -u postgres -- {self.bin}/pgbench -i -q -s {scale} bench")
        self.psql("CREATE DATABASE catalog")
        self.psql(f"DO $$BEGIN FOR i IN 1..{tables} LOOP "
                  "EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text)', i); END LOOP; END$$", db="catalog")
        # One transaction per table: a single one would hold a lock on every table at once and
        # run the shared lock table out of memory with many clients.
        self.psql(f"CREATE PROCEDURE touch_all() LANGUAGE plpgsql AS $$BEGIN FOR i IN 1..{tables} LOOP "
                  "EXECUTE format('SELECT 1 FROM t%s LIMIT 1', i); COMMIT; END LOOP; END$$", db="catalog")
        self.sh("mkdir -p /var/lib/postgresql/bench && printf 'SELECT 1;\\n\\\\sleep 1000 s\\n' > /var/lib/postgresql/bench/idle.sql && "
                "printf 'CALL touch_all();\\n\\\\sleep 1000 s\\n' > /var/lib/postgresql/bench/catalog.sql")
        # Warm the shared buffers, so that the baselines count them.
        self.sh(f"runuser -u postgres -- {self.bin}/pgbench -n -S -c 4 -T 10 bench >/dev/null")

    def memory(self):
        """The container's memory without the file page cache, in bytes (cgroup v1, read from the machine)."""
        base = f"/sys/fs/cgroup/memory/docker/{self.id}"
        with open(f"{base}/memory.usage_in_bytes", encoding="utf-8") as handle:
            usage = int(handle.read())
        with open(f"{base}/memory.stat", encoding="utf-8") as handle:
            stat = dict(line.split() for line in handle)
        return usage - int(stat["total_active_file"]) - int(stat["total_inactive_file"])

    def client_backends(self, db, state=None):
        only = f" AND state = '{state}'" if state else ""
        return int(self.psql(f"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                             f"AND datname = '{db}'{only}") or 0)

    def uss_per_backend(self, db):
        """Mean private memory of the client backends on ``db``, in bytes."""
        out = self.sh("for p in $(runuser -u postgres -- psql -XAtq -c \"SELECT pid FROM pg_stat_activity "
                      f"WHERE backend_type = 'client backend' AND datname = '{db}'\"); do "
                      "awk '/^Private_(Clean|Dirty):/ {s += $2} END {print s}' /proc/$p/smaps_rollup 2>/dev/null; done",
                      check=False).stdout.split()
        kb = [int(x) for x in out if x.isdigit()]
        return sum(kb) * 1024 / len(kb) if kb else None

    def stop(self):
        run(["docker", "rm", "-f", self.name], check=False)


def measure(server, workload, clients, seconds):
    """One workload with ``clients`` connections: baseline, peak and USS while they are all connected."""
    db = "catalog" if workload == "catalog" else "bench"
    pgbench = f"runuser -u postgres -- {server.bin}/pgbench -n -c {clients} -j {min(4, clients)}"
    command = {
        "idle": f"{pgbench} -f /var/lib/postgresql/bench/idle.sql -t 1 bench",
        "select-only": f"{pgbench} -S -T {seconds + 30} bench",
        "tpcb-like": f"{pgbench} -T {seconds + 30} bench",
        "catalog": f"{pgbench} -f /var/lib/postgresql/bench/catalog.sql -t 1 catalog",
    }[workload]
    time.sleep(1)
    baseline = server.memory()
    runner = threading.Thread(target=server.sh, args=(f"timeout {seconds + 600} {command} >/tmp/pgbench.log 2>&1",), kwargs={"check": False})
    runner.start()
    peak, ready_at, uss = baseline, None, None
    deadline = time.monotonic() + 600
    # Sample until every client is connected (for catalog: and has touched every table, so none
    # is active any more), then for `seconds` more.
    while time.monotonic() < deadline and runner.is_alive():
        peak = max(peak, server.memory())
        if "aborted" in server.sh("cat /tmp/pgbench.log", check=False).stdout:
            break
        if ready_at is None and server.client_backends(db) >= clients and (
                workload != "catalog" or server.client_backends(db, state="active") == 0):
            ready_at = time.monotonic()
        if ready_at is not None and time.monotonic() - ready_at >= seconds:
            uss = server.uss_per_backend(db)
            peak = max(peak, server.memory())
            break
        time.sleep(0.5)
    server.sh("pkill -INT pgbench", check=False)
    runner.join(timeout=120)
    server.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' "
                "AND backend_type = 'client backend'")
    if ready_at is None:
        raise RuntimeError(f"PostgreSQL {server.version} {workload}: not all {clients} clients connected:\n"
                           + server.sh("cat /tmp/pgbench.log", check=False).stdout[-2000:])
    return {
        "release": server.release, "version": server.version, "workload": workload, "clients": clients,
        "baseline_mb": round(baseline / MB, 1), "peak_mb": round(peak / MB, 1),
        "per_connection_mb": round((peak - baseline) / clients / MB, 2),
        "uss_per_backend_mb": round(uss / MB, 2) if uss else None,
    }


def run_all(size, out):
    points = []
    for release in size["releases"]:
        server = Server(release)
        most = max(size["clients"] + size["catalog_clients"])
        log(f"PostgreSQL {server.version} (Debian {release}): max_connections {most + 20}, pgbench scale "
            f"{size['scale']}, {size['tables']} catalog tables")
        try:
            server.start(most + 20)
            server.prepare(size["scale"], size["tables"])
            for workload in WORKLOADS:
                for clients in size["catalog_clients"] if workload == "catalog" else size["clients"]:
                    point = measure(server, workload, clients, size["seconds"])
                    log(f"  {workload:11} {clients:4} clients: {point['per_connection_mb']} MB per connection "
                        f"(USS {point['uss_per_backend_mb']} MB), baseline {point['baseline_mb']} MB")
                    points.append(point)
        finally:
            server.stop()
    results = {"date": time.strftime("%Y-%m-%d"), "size": size, "points": points}
    with open(os.path.join(out, "memory.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    write_report(results, out)


def write_report(results, out):
    lines = [f"# Memory per connection ({results['date']})", "",
             "Container memory without the file page cache (cgroup v1), peak during the workload minus the "
             "baseline before it, per connection; USS: mean private memory of the client backends.", "",
             "| PostgreSQL | workload | clients | MB per connection | USS MB per backend | baseline MB | peak MB |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for p in results["points"]:
        uss = "-" if p["uss_per_backend_mb"] is None else p["uss_per_backend_mb"]
        lines.append(f"| {p['version']} | {p['workload']} | {p['clients']} | {p['per_connection_mb']} | {uss} | "
                     f"{p['baseline_mb']} | {p['peak_mb']} |")
    with open(os.path.join(out, "memory.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def check(out):
    problems = []
    try:
        with open(os.path.join(out, "memory.json"), encoding="utf-8") as handle:
            results = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"memory check failed: {error}")
        return 1
    size = results["size"]
    expected = len(size["releases"]) * (3 * len(size["clients"]) + len(size["catalog_clients"]))
    if len(results["points"]) != expected:
        problems.append(f"{len(results['points'])} points, expected {expected}")
    for p in results["points"]:
        if not isinstance(p["per_connection_mb"], (int, float)) or p["per_connection_mb"] <= 0:
            problems.append(f"PostgreSQL {p['version']} {p['workload']} {p['clients']}: per_connection_mb {p['per_connection_mb']!r}")
    if not os.path.isfile(os.path.join(out, "memory.md")):
        problems.append("memory.md missing")
    if problems:
        print("memory check failed:\n  " + "\n  ".join(problems))
        return 1
    print(f"memory check: {out} holds well-formed results")
    return 0


if __name__ == "__main__":
    sys.exit(main(__doc__, SIZES, run_all, check))
