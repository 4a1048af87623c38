"""The ceiling, proven: as many direct connections as pg_tune's ceiling allows, all running at once.

    bench/ceiling.py run --size full|smoke --out DIR    run, write DIR/ceiling.json and DIR/ceiling.md
    bench/ceiling.py check DIR                          the files exist and are well-formed

For each memory limit of the lab's containers (1 GB like bench<N>, 2 GB like db1), a Debian 12
container (PostgreSQL 15) with that ``--memory`` is tuned with pg_tune for its limit and CPUs,
profile web (the highest ceiling), and max_connections set to the ceiling itself. Then
ceiling - 3 (superuser_reserved_connections) pgbench clients log in as an ordinary role over
TCP and run the TPC-B-like mix at once. Recorded: pgbench's exit code and failed
transactions, connection errors on its stderr, the peak container memory without the file
page cache against the limit, and the cgroup's OOM kills (memory.oom_control, oom_kill).

The catalog point runs the same number of clients, each touching every one of 2000 tables
(bench/memory.py's catalog workload): 17 to 18 MB per connection, which the default
connection_memory of 2MB does not cover. It is run twice: with the default sizing (what
happens to a schema that big: expect OOM kills), and with connection_memory 20MB, whose
ceiling is lower.
"""

import json
import os
import sys
import threading
import time
from pathlib import Path

from memory import MB, Server
from part import logger, main, pgbench_summary, run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder  # noqa: E402

_AnsibleCollectionFinder(paths=[str(ROOT / "collections")])._install()
from ansible_collections.headroom.pg.plugins.filter.pg_config import pg_conf_value  # noqa: E402
from ansible_collections.headroom.pg.plugins.filter.postgresql_sizing import (  # noqa: E402
    pg_max_connections,
    pg_size_bytes,
    pg_tune,
)

PASSWORD = "headroom-bench-only"
SIZES = {
    # The catalog point with the default connection_memory last: it may end in OOM kills.
    "full": {"limits": ["1GB", "2GB"], "workloads": [("tpcb-like", None), ("catalog", "20MB"), ("catalog", None)],
             "seconds": 30, "scale": 10, "tables": 2000},
    # CI: proves the part runs and writes well-formed results; says nothing about the figures.
    "smoke": {"limits": ["1GB"], "workloads": [("tpcb-like", None)], "seconds": 3, "scale": 1, "tables": 20,
              "clients": 5},
}

log = logger("ceiling")


class LimitedServer(Server):
    """A Debian 12 bench container with a memory limit."""

    def __init__(self, limit):
        super().__init__("12")
        self.limit = limit
        self.name = f"headroom-bench-ceiling-{limit.lower()}"

    def boot(self):
        run(["docker", "rm", "-f", self.name], check=False)
        run(["docker", "run", "-d", "--name", self.name, "--hostname", self.name, "--cap-add", "SYS_ADMIN",
             "--memory", self.limit.replace("GB", "g"), "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
             "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "headroom/debian:12-baked",
             "/lib/systemd/systemd"])
        self.id = run(["docker", "inspect", "--format", "{{.Id}}", self.name]).stdout.strip()
        self.wait_until_it_answers("PostgreSQL did not answer")
        self.cpus = int(self.sh("nproc").stdout)

    def configure(self, spec):
        """pg_tune for ``spec`` with max_connections at its ceiling; returns (settings, report)."""
        report = pg_max_connections(spec)
        settings = pg_tune({**spec, "max_connections": report["ceiling"]})
        conf = "".join(f"{name} = {pg_conf_value(value, name)}\n" for name, value in settings.items())
        conf += "log_connections = off\nlisten_addresses = '127.0.0.1'\n"
        self.sh(f"cat > /etc/postgresql/15/main/conf.d/50-bench.conf <<'EOF'\n{conf}EOF\n"
                "grep -q '^host all bench' /etc/postgresql/15/main/pg_hba.conf || "
                "sed -i '1i host all bench 127.0.0.1/32 scram-sha-256' /etc/postgresql/15/main/pg_hba.conf; "
                "systemctl restart postgresql@15-main")
        self.wait_until_it_answers("PostgreSQL did not come back with the ceiling's settings")
        return settings, report

    def oom_kills(self):
        """OOM kills in the container's cgroup and every cgroup below it (the kernel counts them where the victim ran)."""
        kills = 0
        for control in Path(f"/sys/fs/cgroup/memory/docker/{self.id}").rglob("memory.oom_control"):
            kills += int(dict(line.split() for line in control.read_text(encoding="utf-8").splitlines()).get("oom_kill", 0))
        return kills

    def backends_killed(self):
        """Backends the postmaster saw die of a signal, from the server log: 9 is the OOM killer, 6 a malloc
        that failed inside glibc at the limit. Either makes the postmaster end every session."""
        out = self.sh("grep -c 'terminated by signal' /var/log/postgresql/postgresql-15-main.log", check=False)
        return int(out.stdout.strip() or 0)


def point(server, workload, connection_memory, size):
    spec = {"memory": server.limit, "cpus": server.cpus, "version": 15, "profile": "web"}
    if connection_memory:
        spec["connection_memory"] = connection_memory
    settings, report = server.configure(spec)
    clients = size.get("clients", report["ceiling"] - settings["superuser_reserved_connections"])
    db, script = ("catalog", "-f /var/lib/postgresql/bench/catalog-loop.sql") if workload == "catalog" else ("bench", "")
    before, killed_before = server.oom_kills(), server.backends_killed()
    baseline = server.memory()
    command = (f"ulimit -n 16384; PGPASSWORD={PASSWORD} timeout {size['seconds'] + 300} {server.bin}/pgbench -h 127.0.0.1 "
               f"-U bench -n {script} -c {clients} -j {min(4, clients)} -T {size['seconds']} {db}")
    result = {}
    runner = threading.Thread(target=lambda: result.update(out=server.sh(command, check=False, timeout=size["seconds"] + 400)))
    runner.start()
    peak = baseline
    while runner.is_alive():
        peak = max(peak, server.memory())
        time.sleep(0.5)
    runner.join()
    out = result["out"]
    errors = [line for line in out.stderr.splitlines()
              if any(word in line for word in ("connection to server", "too many", "remaining connection"))]
    aborted = [line for line in out.stderr.splitlines() if "aborted" in line or "terminat" in line or "memory" in line]
    tps, failed = pgbench_summary(out.stdout)
    limit = pg_size_bytes(server.limit)
    return {
        "memory_limit": server.limit, "cpus": server.cpus, "workload": workload,
        "connection_memory": connection_memory or "default (2MB)", "ceiling": report["ceiling"],
        "max_connections": settings["max_connections"], "work_mem": settings["work_mem"],
        "shared_buffers": settings["shared_buffers"], "clients": clients, "exit_code": out.returncode, "tps": tps or 0.0,
        "failed_transactions": failed,
        "connection_errors": len(errors), "errors_sample": (errors + aborted)[:3],
        "oom_kills": server.oom_kills() - before, "backends_killed": server.backends_killed() - killed_before,
        "baseline_mb": round(baseline / MB), "peak_mb": round(peak / MB),
        "peak_share_of_limit": round(peak / limit, 3),
    }


def run_all(size, out):
    points = []
    for limit in size["limits"]:
        server = LimitedServer(limit)
        log(f"{server.name}: --memory {limit}")
        try:
            server.boot()
            server.psql(f"SET password_encryption = 'scram-sha-256'; CREATE ROLE bench LOGIN PASSWORD '{PASSWORD}'")
            server.prepare(size["scale"], size["tables"])
            server.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO bench", db="bench")
            server.psql("GRANT ALL ON ALL TABLES IN SCHEMA public TO bench; GRANT EXECUTE ON PROCEDURE touch_all() TO bench",
                        db="catalog")
            server.sh("printf 'CALL touch_all();\\n' > /var/lib/postgresql/bench/catalog-loop.sql")
            for index, (workload, connection_memory) in enumerate(size["workloads"]):
                p = point(server, workload, connection_memory, size)
                log(f"  {workload} (connection_memory {p['connection_memory']}): ceiling {p['ceiling']}, {p['clients']} "
                    f"clients, exit {p['exit_code']}, {p['connection_errors']} connection errors, {p['oom_kills']} OOM kills "
                    f"({p['backends_killed']} backends killed), "
                    f"peak {p['peak_mb']} MB ({p['peak_share_of_limit']:.0%} of the limit)")
                points.append(p)
                if index + 1 < len(size["workloads"]):
                    server.sh("systemctl restart postgresql@15-main", check=False, timeout=300)
                    server.wait_until_it_answers("PostgreSQL did not come back after the point")
        finally:
            server.stop()
    results = {"date": time.strftime("%Y-%m-%d"), "size": size, "points": points}
    with open(os.path.join(out, "ceiling.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    write_report(results, out)


def write_report(results, out):
    lines = [f"# The ceiling under load ({results['date']})", "",
             "PostgreSQL 15 in a container with the memory limit, tuned by pg_tune (web) with max_connections at the "
             "ceiling; ceiling - 3 clients run at once over TCP as an ordinary role.", "",
             "| memory limit | CPUs | workload | connection_memory | ceiling | work_mem | clients | exit | tps | "
             "failed transactions | connection errors | OOM kills | backends died | peak MB | peak / limit |",
             "| --- | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in results["points"]:
        lines.append(f"| {p['memory_limit']} | {p['cpus']} | {p['workload']} | {p['connection_memory']} | {p['ceiling']} | "
                     f"{p['work_mem']} | {p['clients']} | {p['exit_code']} | {p['tps']:.0f} | {p['failed_transactions']} | "
                     f"{p['connection_errors']} | {p['oom_kills']} | {p['backends_killed']} | {p['peak_mb']} | "
                     f"{p['peak_share_of_limit']:.2f} |")
    with open(os.path.join(out, "ceiling.md"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def check(out):
    try:
        with open(os.path.join(out, "ceiling.json"), encoding="utf-8") as handle:
            results = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"ceiling check failed: {error}")
        return 1
    size = results["size"]
    problems = []
    if len(results["points"]) != len(size["limits"]) * len(size["workloads"]):
        problems.append(f"{len(results['points'])} points, expected {len(size['limits']) * len(size['workloads'])}")
    problems += [f"{p['memory_limit']} {p['workload']}: no peak memory" for p in results["points"] if not p["peak_mb"]]
    if not os.path.isfile(os.path.join(out, "ceiling.md")):
        problems.append("ceiling.md missing")
    if problems:
        print("ceiling check failed:\n  " + "\n  ".join(problems))
        return 1
    print(f"ceiling check: {out} holds well-formed results")
    return 0


if __name__ == "__main__":
    sys.exit(main(__doc__, SIZES, run_all, check))
