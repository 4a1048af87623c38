"""The fleet scenario: live servers, reports and day-2 playbooks against numbers computed here.

Every expected number is computed by this file from the inventory in molecule.yml and
from the live servers (nproc, docker's memory limit, pg_stat_activity), not read from
headroom's own output.
"""

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import re

import matplotlib.image
import numpy
import pytest
import testinfra

PROJECT = Path(__file__).resolve().parents[3]
PASSWORD = "headroom-fleet-only"  # group_vars fleet_password
DB1, DB2 = "headroom-fleet-db1", "headroom-fleet-db2"
PGB1, PGB2 = "headroom-fleet-pgb1", "headroom-fleet-pgb2"
PARITY = ["max_connections", "max_worker_processes", "max_wal_senders", "max_prepared_transactions",
          "max_locks_per_transaction"]
RUN = str(int(time.time()))  # application names unique to this run: earlier runs' sessions may linger
UNIT_BYTES = {None: 1, "": 1, "B": 1, "kB": 1024, "8kB": 8192, "MB": 1024**2}
CONNECTION_MEMORY = 2 * 1024**2  # docs/sizing.md: a backend's own memory outside work_mem (measured)
WEB_ALLOCATIONS = 3  # docs/sizing.md: work_mem areas per connection for the web profile


def pool_rule(server_cpus):
    """docs/sizing.md: PgBouncer's default pool, what the server runs best at once."""
    return 4 * server_cpus + 4


#: roles/pgpool/README.md: per node and backend, the health and streaming replication checks and the
#: slots kept for connections whose backend has not exited yet (pgpool_demand).
PGPOOL_CHECKS, PGPOOL_CLOSING_MARGIN = 2, 2


def pgpool_children():
    """pgb1's pgpool-II: num_init_children by the pool rule of its smallest backend, max_pool 1 (one user)."""
    return pool_rule(min(cpus(DB1), cpus(DB2)))


def pgpool_demand():
    """What pgb1's pgpool-II holds on each of db1 and db2: every child's connection, the checks, the margin."""
    return pgpool_children() + PGPOOL_CHECKS + PGPOOL_CLOSING_MARGIN


def node(name):
    return testinfra.get_host(f"docker://{name}")


def sql(name, query, dbname="postgres"):
    return node(name).check_output(
        "runuser -u postgres -- psql -XAtq --set=ON_ERROR_STOP=1 --dbname=%s --command=%s", dbname, query
    )


def address(name):
    """The container's address on the scenario's network, as the servers see its sessions come from."""
    return subprocess.run(
        ["docker", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def pgpool_sql(query):
    """One session through pgb1's pgpool-II (127.0.0.1:9999) as app on appdb."""
    return node(PGB1).check_output(f"PGPASSWORD={PASSWORD} psql -XAtq -h 127.0.0.1 -p 9999 -U app -d appdb -c %s", query)


def cpus(name):
    return int(node(name).check_output("nproc"))


def memory_limit(name):
    out = subprocess.run(["docker", "inspect", "--format", "{{.HostConfig.Memory}}", name],
                         check=True, capture_output=True, text=True)
    return int(out.stdout)


def expected_demand():
    """From molecule.yml: a pool per (database, user) of the pool rule, pgb1's pgpool-II, and the direct clients."""
    pool1, pool2 = pool_rule(cpus(DB1)), pool_rule(cpus(DB2))
    return {
        # appdb on pgb1 and pgb2, pgpool-II, monitoring 3, backups 2, leaky 3, app cron 2
        DB1: pool1 + pool1 + pgpool_demand() + 3 + 2 + 3 + 2,
        DB2: pool2 + pgpool_demand() + 2 * 2,  # reports on pgb2, pgpool-II, report jobs 2 on each pgbouncer host
    }


def playbook_command(name, *args, inventories=()):
    """ansible-playbook of a project playbook against this scenario's inventory: (argv, env with molecule's config)."""
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    command = ["ansible-playbook", "-i", str(ephemeral / "inventory")]
    for extra in inventories:
        command += ["-i", str(extra)]
    command += [str(PROJECT / "playbooks" / name), *args]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ephemeral / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return command, env


def playbook(name, *args, inventories=()):
    """Run a playbook of the project against this scenario's inventory, with molecule's config."""
    command, env = playbook_command(name, *args, inventories=inventories)
    return subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600, check=False)


def client_backends(name):
    """Client sessions on the server, this query's own left out (pg_stat_activity)."""
    rows = sql(name, "SELECT coalesce(json_agg(json_build_object('pid', pid, 'app', application_name, "
                     "'state', state, 'addr', host(client_addr))), '[]') FROM pg_stat_activity "
                     "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
    return json.loads(rows)


def open_idle_sessions(name, app, count, user="app"):
    """Start `count` sessions that stay idle (psql waiting on stdin) with application_name `app`."""
    if user == "postgres":
        target = "runuser -u postgres -- psql -X -d postgres"
    else:
        target = f"PGPASSWORD={PASSWORD} psql -X -h 127.0.0.1 -U {user} -d appdb"
    for _session in range(count):
        node(name).check_output(f"PGAPPNAME={app} nohup sh -c 'sleep 900 | {target}' >/dev/null 2>&1 &")
    for _attempt in range(50):
        if sum(1 for s in client_backends(name) if s["app"] == app and s["state"] == "idle") == count:
            return
        time.sleep(0.2)
    raise AssertionError(f"{count} idle sessions of {app} did not appear")


def pids_of(name, app):
    return sorted(s["pid"] for s in client_backends(name) if s["app"] == app)


def settings(name):
    rows = sql(name, "SELECT json_object_agg(name, json_build_object('setting', setting, 'unit', unit)) FROM pg_settings")
    return json.loads(rows)


def bytes_of(row):
    return int(row["setting"]) * UNIT_BYTES[row["unit"]]


@pytest.fixture(autouse=True)
def end_test_sessions():
    """End the sessions a test opened, so the next one has the primary's few spare slots."""
    yield
    sql(DB1, f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE '%-{RUN}'")


@pytest.mark.parametrize("server", [DB1, DB2])
def test_max_connections_covers_the_demand_and_fits_in_memory(server):
    live = settings(server)
    max_connections = int(live["max_connections"]["setting"])
    # Demand + reserved + the default spare of max(10, 20% of the demand).
    spare = max(10, -(-expected_demand()[server] // 5))
    assert max_connections >= expected_demand()[server] + int(live["superuser_reserved_connections"]["setting"]) + spare
    # docs/sizing.md's memory bound from the running values, against the container's limit: every
    # connection runs a query at once except pgpool-II's closing margin (slots of backends that are
    # exiting, docs/budget.md's active demand).
    processes = max_connections + int(live["max_parallel_workers"]["setting"])
    active = processes - PGPOOL_CLOSING_MARGIN
    worst = (
        bytes_of(live["shared_buffers"]) + bytes_of(live["wal_buffers"])
        + processes * CONNECTION_MEMORY + active * WEB_ALLOCATIONS * bytes_of(live["work_mem"])
        + bytes_of(live["maintenance_work_mem"])
        + int(live["autovacuum_max_workers"]["setting"]) * bytes_of(live["autovacuum_work_mem"])
    )
    assert worst <= memory_limit(server)


def connection_limit(name, role):
    return int(sql(name, f"SELECT rolconnlimit FROM pg_roles WHERE rolname = '{role}'"))


def test_each_direct_role_gets_its_declared_share_as_its_connection_limit():
    # molecule.yml: leaky jobs 3; app cron 2 plus app's pools on db1 (appdb on pgb1 and pgb2) and a
    # connection per pgpool-II child (app is a pgpool user), which is more than its pool on the
    # standby (reports on pgb2) and the children there: the primary sets the larger.
    pool1, pool2 = pool_rule(cpus(DB1)), pool_rule(cpus(DB2))
    assert connection_limit(DB1, "leaky") == 3
    assert connection_limit(DB1, "app") == max(2 + pool1 + pool1 + pgpool_children(), pool2 + pgpool_children())
    assert connection_limit(DB2, "leaky") == 3  # replicated from the primary's catalog
    assert connection_limit(DB1, "replicator") == -1  # nobody declared it: left alone


@pytest.fixture
def leak():
    """The declared direct client leaky-jobs (molecule.yml), leaking: 3 sessions it never returns."""
    open_idle_sessions(DB1, "leaky-jobs", 3, user="leaky")
    yield "leaky-jobs"
    sql(DB1, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'leaky'")


def test_a_leaking_client_exhausts_only_its_own_share_while_pgbench_completes(leak):
    node(DB1).check_output(f"PGPASSWORD={PASSWORD} pgbench -h {PGB1} -p 6432 -U app --initialize --scale=1 --quiet appdb")
    load = subprocess.Popen(
        ["docker", "exec", "-e", f"PGPASSWORD={PASSWORD}", DB1, "pgbench", "-h", PGB1, "-p", "6432", "-U", "app",
         "--client=8", "--jobs=2", "--time=8", "appdb"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(2)
    one_more = node(DB1).run(f"PGAPPNAME={leak} PGPASSWORD={PASSWORD} psql -XAtq -h 127.0.0.1 -U leaky -d appdb -c 'SELECT 1'")
    output, _stderr = load.communicate(timeout=120)

    assert one_more.rc != 0
    assert 'too many connections for role "leaky"' in one_more.stderr, one_more.stderr
    assert len(pids_of(DB1, leak)) == 3  # the leak keeps its share, and only that
    assert load.returncode == 0, output
    processed = int(re.search(r"number of transactions actually processed: (\d+)", output).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", output)
    assert processed > 0, output
    assert failed is None or int(failed.group(1)) == 0, output
    assert "error" not in output.lower(), output


def test_capacity_flags_the_leak_at_its_share_with_the_dry_run_that_frees_it(leak, tmp_path):
    result = playbook("capacity.yml", "-e", f"connection_budget_report_dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "capacity.json").read_text())
    row = next(a for a in report["applications"] if a["host"] == DB1 and a["application_name"] == leak)
    assert (row["kind"], row["declared"], row["held"], row["idle"]) == ("direct", 3, 3, 3)
    flag = next(f for f in report["flags"] if leak in f["message"] and "holds all 3" in f["message"])
    assert flag["level"] == "warning" and "CONNECTION LIMIT refuses its next login" in flag["message"]
    assert "playbooks/terminate-idle.yml -l headroom-fleet-db1" in flag["command"]
    assert f"| {leak} | direct | leaky |" in (tmp_path / "capacity.md").read_text()
    # The printed dry run selects exactly the leaked sessions and ends nothing.
    dry = subprocess.run(flag["command"].replace("ansible-playbook playbooks/terminate-idle.yml",
                                                 " ".join(playbook_command("terminate-idle.yml")[0])),
                         shell=True, cwd=PROJECT, env=playbook_command("terminate-idle.yml")[1],
                         capture_output=True, text=True, timeout=600, check=False)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"PIDs {json.dumps(pids_of(DB1, leak))}" in dry.stdout.replace("\n", " ")
    assert len(pids_of(DB1, leak)) == 3


def test_the_standby_streams_and_runs_at_least_its_primarys_settings():
    assert sql(DB2, "SELECT pg_is_in_recovery()") == "t"
    assert sql(DB1, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1"
    primary, standby = settings(DB1), settings(DB2)
    for name in PARITY:
        assert int(standby[name]["setting"]) >= int(primary[name]["setting"]), name
    # Its own demand (+ 3 reserved + 10 spare) is smaller: only parity lifts it to the primary's max_connections.
    assert expected_demand()[DB2] + 3 + 10 < int(standby["max_connections"]["setting"])
    assert standby["max_connections"]["setting"] == primary["max_connections"]["setting"]


@pytest.mark.parametrize(("pooler", "databases"), [(PGB1, {"appdb": DB1}), (PGB2, {"appdb": DB1, "reports": DB2})])
def test_pgbouncer_runs_the_pools_the_budget_counted(pooler, databases):
    out = node(pooler).check_output("/usr/local/lib/headroom/pgbouncer-console pgbouncer.service %s", "SHOW DATABASES")
    live = {row["name"]: row for row in json.loads(out)["rows"]}
    for database, server in databases.items():
        assert int(live[database]["pool_size"]) == pool_rule(cpus(server)), database


@pytest.mark.parametrize(("pooler", "database", "in_recovery"), [(PGB1, "appdb", "f"), (PGB2, "reports", "t")])
def test_applications_reach_the_right_server_through_pgbouncer(pooler, database, in_recovery):
    out = node(pooler).check_output(
        f"PGPASSWORD={PASSWORD} psql -XAtq -h 127.0.0.1 -p 6432 -U app -d {database} -c 'SELECT pg_is_in_recovery()'"
    )
    assert out == in_recovery


def test_pgpool_runs_the_children_and_pool_the_budget_counted():
    live = dict(line.split("|")[:2] for line in pgpool_sql("SHOW pool_status").splitlines())
    assert (live["num_init_children"], live["max_pool"]) == (str(pgpool_children()), "1")
    assert (live["backend_hostname0"], live["backend_hostname1"]) == (DB1, DB2)
    assert live["reserved_connections"] == "0"  # clients beyond the children queue
    nodes = [line.split("|") for line in pgpool_sql("SHOW pool_nodes").splitlines()]
    assert [(row[1], row[3]) for row in nodes] == [(DB1, "up"), (DB2, "up")], nodes
    assert ("primary" in nodes[0]) and ("standby" in nodes[1]), nodes


def test_pgpool_sends_writes_to_the_primary_and_balances_reads_over_both():
    # A write in every session: on the standby it would fail ("read-only transaction").
    for _session in range(5):
        pgpool_sql("CREATE TEMP TABLE pgpool_write_check (x int)")
    # current_setting() is stable, so pgpool-II may balance it (a volatile function such as
    # pg_is_in_recovery() goes to the primary); a hot standby runs every transaction read-only.
    # Each session picks a node by weight (1 and 1): 30 sessions reach both but once in 5e8.
    seen = {pgpool_sql("SELECT current_setting('transaction_read_only')") for _session in range(30)}
    assert seen == {"on", "off"}, seen


def pgbouncer_server_pids(pooler):
    """The backend PIDs of PgBouncer's server connections on the host (SHOW SERVERS)."""
    out = node(pooler).check_output("/usr/local/lib/headroom/pgbouncer-console pgbouncer.service %s", "SHOW SERVERS")
    return [int(row["remote_pid"]) for row in json.loads(out)["rows"]]


def test_clients_beyond_the_children_queue_at_pgpool_and_the_primary_sees_at_most_its_children():
    clients = 4 * pgpool_children()
    # pgb1's own PgBouncer connects from the same address: its server connections are not pgpool-II's.
    others = ",".join(str(pid) for pid in pgbouncer_server_pids(PGB1)) or "0"
    count = (f"SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND client_addr = '{address(PGB1)}' "
             f"AND pid NOT IN ({others})")
    sampler = subprocess.Popen(
        ["docker", "exec", DB1, "bash", "-c",
         f"touch /tmp/sampling; while [ -e /tmp/sampling ]; do runuser -u postgres -- psql -XAtq -c \"{count}\"; "
         "sleep 0.1; done"],
        stdout=subprocess.PIPE, text=True,
    )
    # --connect: each transaction is a new session, which frees its child for the clients waiting.
    result = node(PGB1).run(
        "printf 'SELECT 1;\\n' > /tmp/select.sql && ulimit -n 4096 && PGPASSWORD=%s /usr/lib/postgresql/15/bin/pgbench "
        "-h 127.0.0.1 -p 9999 -U app --no-vacuum --file=/tmp/select.sql --connect --client=%s --jobs=%s "
        "--transactions=3 appdb",
        PASSWORD, str(clients), str(clients),
    )
    node(DB1).run("rm -f /tmp/sampling")
    samples = [int(line) for line in sampler.communicate(timeout=60)[0].split()]
    assert result.rc == 0, result.stdout + result.stderr
    assert f"number of transactions actually processed: {3 * clients}/{3 * clients}" in result.stdout, result.stdout
    assert "too many clients" not in result.stderr, result.stderr
    assert len(samples) >= 3, samples
    assert 0 < max(samples) <= pgpool_children(), samples


def test_plan_reports_the_numbers_from_the_fact_cache(tmp_path):
    result = playbook("plan.yml", "-e", f"connection_budget_report_dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())
    demand = expected_demand()
    for server in (DB1, DB2):
        planned = plan["servers"][server]
        assert planned["demand"] == demand[server]
        assert planned["resources"]["memory"] == memory_limit(server)
        assert planned["resources"]["memory_source"] == "measured"
        assert planned["max_connections"] == int(sql(server, "SHOW max_connections"))
        assert planned["headroom"] == planned["ceiling"] - planned["max_connections"] >= 0
    assert plan["servers"][DB2]["primary"] == DB1
    # The primary keeps the default spare slots above demand + 3 reserved, and the plan says so.
    primary = plan["servers"][DB1]
    assert primary["spare_connections"] == max(10, -(-demand[DB1] // 5))
    assert primary["max_connections"] == demand[DB1] + 3 + primary["spare_connections"]
    markdown = (tmp_path / "plan.md").read_text()
    assert "| spare |" in markdown
    assert f"| {DB1} |" in markdown and f"| {DB2} | {DB1} |" in markdown


def test_capacity_counts_the_sessions_pg_stat_activity_shows(tmp_path):
    for pooler, database in ((PGB1, "appdb"), (PGB2, "appdb"), (PGB2, "reports")):  # PgBouncer makes pools on use
        node(pooler).check_output(f"PGPASSWORD={PASSWORD} psql -XAtq -h 127.0.0.1 -p 6432 -U app -d {database} -c 'SELECT 1'")
    pgpool_sql("SELECT 1")  # a child caches its connections to db1 and db2
    open_idle_sessions(DB1, f"fleet-capacity-test-{RUN}", 4)
    pgbouncer_pids = pgbouncer_server_pids(PGB1)

    def pgpool_session(session):
        """pgpool-II's session on db1: from pgb1, and not one of PgBouncer's server connections there."""
        return session["addr"] == address(PGB1) and session["pid"] not in pgbouncer_pids

    before = client_backends(DB1)
    result = playbook("capacity.yml", "-e", f"connection_budget_report_dir={tmp_path}",
                      "-e", '{"connection_budget_capacity_thresholds": {"slots_share": 0.8, '
                      '"idle_in_transaction_seconds": 300, "idle_per_application": 4}}')
    # capacity.yml reads pgpool-II first, whose login may make a child drop its cached connection
    # (capacity-pgpool.yml), and then the servers: pgpool-II's sessions are compared after it.
    after = client_backends(DB1)
    assert result.returncode == 0, result.stdout + result.stderr
    others_before, others_after = [s for s in before if not pgpool_session(s)], [s for s in after if not pgpool_session(s)]
    assert len(others_before) == len(others_after), "sessions changed during the run; counts are not comparable"
    report = json.loads((tmp_path / "capacity.json").read_text())
    db1 = report["servers"][DB1]
    max_connections = int(sql(DB1, "SHOW max_connections"))
    assert db1["used"] == len(after)
    assert db1["free"] == max_connections - 3 - len(after)
    assert db1["by_application"][f"fleet-capacity-test-{RUN}"] == 4
    assert any(f"'fleet-capacity-test-{RUN}' holds 4 idle" in flag["message"] for flag in report["flags"])
    assert report["servers"][DB2]["in_recovery"] is True
    assert {pool["database"] for pool in report["poolers"][PGB1]["pools"]} == {"appdb"}
    assert {pool["database"] for pool in report["poolers"][PGB2]["pools"]} == {"appdb", "reports"}
    assert report["poolers"][PGB2]["clients_waiting"] == 0
    pgpool = next(a for a in report["applications"] if a["host"] == DB1 and a["kind"] == "pgpool")
    held = sum(1 for s in after if pgpool_session(s))
    assert (pgpool["application_name"], pgpool["held"], pgpool["declared"]) == (PGB1, held, pgpool_demand())
    assert report["pgpool"][PGB1]["num_init_children"] == pgpool_children()
    assert (tmp_path / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The chart draws the servers' used slots and the pools' server connections (colours: slot_chart.py).
    image = matplotlib.image.imread(tmp_path / "capacity.png")[:, :, :3]
    for colour in ("#d95f02", "#66a61e"):
        rgb = numpy.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        assert numpy.all(numpy.abs(image - rgb) < 1.5 / 255, axis=2).sum() > 500, colour
    assert f"| {DB1} | no | {max_connections} |" in (tmp_path / "capacity.md").read_text()


def test_terminate_idle_dry_run_ends_nothing_and_confirmed_ends_exactly_the_selected():
    open_idle_sessions(DB1, f"fleet-idle-victim-{RUN}", 3)
    open_idle_sessions(DB1, f"fleet-idle-bystander-{RUN}", 1)
    open_idle_sessions(DB1, f"fleet-idle-victim-super-{RUN}", 1, user="postgres")
    victims = pids_of(DB1, f"fleet-idle-victim-{RUN}")
    applications = [f"fleet-idle-victim-{RUN}", f"fleet-idle-victim-super-{RUN}"]
    selection = ["-l", DB1, "-e", json.dumps({"headroom_terminate_applications": applications,
                                              "headroom_terminate_min_age": 0})]

    dry = playbook("terminate-idle.yml", *selection)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"PIDs {json.dumps(victims)}" in dry.stdout.replace("\n", " ")
    assert pids_of(DB1, f"fleet-idle-victim-{RUN}") == victims

    bystander = pids_of(DB1, f"fleet-idle-bystander-{RUN}")
    superuser = pids_of(DB1, f"fleet-idle-victim-super-{RUN}")
    confirmed = playbook("terminate-idle.yml", *selection, "-e", "headroom_terminate_confirm=true")
    assert confirmed.returncode == 0, confirmed.stdout + confirmed.stderr
    assert "ended 3 session(s)" in confirmed.stdout.replace("\n", " ")
    assert pids_of(DB1, f"fleet-idle-victim-{RUN}") == []
    assert pids_of(DB1, f"fleet-idle-bystander-{RUN}") == bystander
    assert pids_of(DB1, f"fleet-idle-victim-super-{RUN}") == superuser  # superusers are spared unless told


MANAGED = {
    DB1: ["/etc/postgresql/15/main/conf.d/50-headroom.conf"],
    DB2: ["/etc/postgresql/15/main/conf.d/50-headroom.conf"],
    PGB1: ["/etc/pgbouncer/pgbouncer.ini", "/etc/pgpool2/pgpool.conf"],
    PGB2: ["/etc/pgbouncer/pgbouncer.ini"],
}


def fingerprint():
    state = {}
    for name, paths in MANAGED.items():
        for path in paths:
            state[f"{name}:{path}"] = hashlib.sha256(node(name).file(path).content).hexdigest()
    for name in (DB1, DB2):
        state[f"{name}:start"] = sql(name, "SELECT pg_postmaster_start_time()")
    return state


def live_state():
    """What a run could change: every file headroom manages (checksum, mode, owner), the running settings,
    the postmaster's start and last reload, PgBouncer's and pgpool-II's PIDs and live settings."""
    state = {}
    files = ("find /etc/postgresql /etc/pgbouncer /etc/pgpool2 /etc/systemd/system -type f "
             "\\( -path '/etc/systemd/system/pgbouncer*' -o ! -path '/etc/systemd/*' \\) "
             "-exec stat -c '%n %a %U %G' {} + -exec sha256sum {} + 2>/dev/null | sort")
    for name in (DB1, DB2, PGB1, PGB2):
        state[f"{name}:files"] = node(name).check_output(files)
    for name in (DB1, DB2):
        state[f"{name}:settings"] = sql(name, "SELECT json_object_agg(name, setting ORDER BY name) FROM pg_settings")
        state[f"{name}:start and reload"] = sql(name, "SELECT pg_postmaster_start_time(), pg_conf_load_time()")
    for name in (PGB1, PGB2):
        state[f"{name}:pid"] = node(name).check_output("systemctl show --property=MainPID --value pgbouncer.service")
        state[f"{name}:config"] = node(name).check_output(
            "/usr/local/lib/headroom/pgbouncer-console pgbouncer.service %s", "SHOW CONFIG")
    state["pgpool:pid"] = node(PGB1).check_output("systemctl show --property=MainPID --value pgpool2.service")
    state["pgpool:status"] = pgpool_sql("SHOW pool_status")
    return state


def test_check_diff_shows_a_change_and_changes_nothing():
    """The README's step before a real fleet changes: site.yml --check --diff with new inputs.

    A web -> oltp profile raises max_wal_size on both servers, and a longer server_idle_timeout
    changes both pgbouncer.ini files: the diff shows both, and no file, running value, postmaster,
    reload or PgBouncer process changes on any host.
    """
    before = live_state()
    result = playbook("site.yml", "--check", "--diff", "-e", "postgresql_tuning_profile=oltp",
                      "-e", "pgbouncer_server_idle_timeout=601")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "[WARNING]" not in output, output
    assert live_state() == before
    live_wal = sql(DB1, "SHOW max_wal_size")
    changed = [line for line in output.splitlines() if line.startswith("+max_wal_size = ")]
    assert len(changed) >= 2 and all(line != f"+max_wal_size = {live_wal}" for line in changed), output
    assert output.count("+server_idle_timeout = 601") >= 2, output
    assert "-server_idle_timeout = 600" in output, output


def test_pools_over_a_servers_ceiling_fail_before_any_host_changes():
    before = fingerprint()
    result = playbook("site.yml", inventories=[Path(__file__).parents[1] / "inventory" / "over-budget"])
    output = (result.stdout + result.stderr).replace("\n", " ")
    assert result.returncode != 0
    assert f"{DB1} is over its connection ceiling" in output
    assert "pgbouncer headroom-fleet-pgb1 (1 process) -> appdb 250" in output
    assert "smaller pools" in output and "transaction pooling" in output and "more memory" in output
    assert "PostgreSQL servers" not in output  # the play that changes servers never started
    assert fingerprint() == before


# The server outside the inventory (prepare.yml): declared in headroom_external_servers with
# max_connections 40 and 2 CPUs; pgb2 reaches it as entry "orders" for user orders_app.
EXT, EXT_ADDRESS, EXT_MAX_CONNECTIONS = "orders-ext", "headroom-fleet-ext", 40


def test_pgbouncer_reaches_the_server_outside_the_inventory_over_verified_tls_without_a_stored_password():
    # The query runs on the external server: its own view of the session says TLS.
    out = node(PGB2).check_output(
        f"PGPASSWORD={PASSWORD} psql -XAtq -h 127.0.0.1 -p 6432 -U orders_app -d orders -c "
        "'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'"
    )
    assert out == "t"
    console = "/usr/local/lib/headroom/pgbouncer-console pgbouncer.service %s"
    config = {row["key"]: row["value"] for row in json.loads(node(PGB2).check_output(console, "SHOW CONFIG"))["rows"]}
    assert config["server_tls_sslmode"] == "verify-full"
    assert config["server_tls_ca_file"] == "/etc/ssl/certs/headroom-test-ca.pem"
    databases = {row["name"]: row for row in json.loads(node(PGB2).check_output(console, "SHOW DATABASES"))["rows"]}
    assert (databases["orders"]["host"], databases["orders"]["port"]) == (EXT_ADDRESS, "5432")
    assert int(databases["orders"]["pool_size"]) == pool_rule(2)  # the declared CPUs
    # The userlist holds the verifier the operator gave, not a password.
    userlist = node(PGB2).file("/etc/pgbouncer/userlist.txt")
    assert (userlist.mode, userlist.user, userlist.group) == (0o640, "postgres", "postgres")
    line = next(line for line in userlist.content_string.splitlines() if line.startswith('"orders_app" '))
    assert line.split(" ", 1)[1].startswith('"SCRAM-SHA-256$4096:') and PASSWORD not in userlist.content_string


def test_site_yml_changed_nothing_on_the_server_outside_the_inventory():
    ext = node(EXT_ADDRESS)
    assert "headroom" not in ext.file("/etc/postgresql/15/main/pg_hba.conf").content_string
    assert not ext.file("/etc/postgresql/15/main/conf.d/50-headroom.conf").exists
    assert ext.check_output("runuser -u postgres -- psql -XAtq -c 'SHOW max_connections'") == str(EXT_MAX_CONNECTIONS)


def test_verify_full_refuses_a_server_whose_certificate_names_another_host():
    """PgBouncer's verify-full with pgb2's CA and userlist: the server by its name passes, by its IP address
    (not in its certificate) the handshake is refused."""
    ext_address = address(EXT_ADDRESS)
    pooler = node(PGB2)
    # A throwaway PgBouncer: two entries that differ only in how they name the server.
    pooler.check_output(
        "install -d -o postgres /tmp/verify-full && printf '%%s\\n' '[databases]' "
        "'by_name = host=%s dbname=orders' 'by_address = host=%s dbname=orders' '[pgbouncer]' "
        "'listen_addr = 127.0.0.1' 'listen_port = 6499' 'unix_socket_dir = /tmp/verify-full' "
        "'auth_type = scram-sha-256' 'auth_file = /etc/pgbouncer/userlist.txt' 'query_wait_timeout = 3' "
        "'server_tls_sslmode = verify-full' 'server_tls_ca_file = /etc/ssl/certs/headroom-test-ca.pem' "
        "'pidfile = /tmp/verify-full/pgbouncer.pid' 'logfile = /tmp/verify-full/pgbouncer.log' "
        "> /tmp/verify-full/pgbouncer.ini && runuser -u postgres -- pgbouncer -d /tmp/verify-full/pgbouncer.ini",
        EXT_ADDRESS, ext_address,
    )
    query = "'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'"
    login = f"PGPASSWORD={PASSWORD} psql -XAtq -h 127.0.0.1 -p 6499 -U orders_app -c {query} -d"
    try:
        by_name, by_address = pooler.run(f"{login} by_name"), pooler.run(f"{login} by_address")
        log = pooler.file("/tmp/verify-full/pgbouncer.log").content_string
    finally:
        pooler.run("kill $(cat /tmp/verify-full/pgbouncer.pid); rm -rf /tmp/verify-full")
    assert (by_name.rc, by_name.stdout.strip()) == (0, "t"), by_name.stderr
    assert by_address.rc != 0 and "query_wait_timeout" in by_address.stderr, by_address.stdout
    assert f"TLS handshake error: name `{ext_address}' not present in server certificate" in log, log


def test_plan_counts_the_pools_and_clients_of_the_server_outside_the_inventory(tmp_path):
    result = playbook("plan.yml", "-e", f"connection_budget_report_dir={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    planned = json.loads((tmp_path / "plan.json").read_text())["external_servers"][EXT]
    demand = pool_rule(2) + 2  # pgb2's orders pool (1 process), the orders reports direct client
    assert (planned["demand"], planned["verdict"]) == (demand, "ok")
    assert planned["headroom"] == EXT_MAX_CONNECTIONS - demand - 3
    assert f"| {EXT} | {EXT_ADDRESS}:5432 | {EXT_MAX_CONNECTIONS} | 3 | {demand} |" in (tmp_path / "plan.md").read_text()


def test_pools_over_the_declared_max_connections_of_a_server_outside_the_inventory_fail_before_any_host_changes():
    before = fingerprint()
    small = json.dumps({"headroom_external_servers": {EXT: {"address": EXT_ADDRESS, "max_connections": 10, "cpus": 2}}})
    result = playbook("site.yml", "-e", small)
    output = (result.stdout + result.stderr).replace("\n", " ")
    assert result.returncode != 0
    assert f"{EXT} (outside the inventory) is over its connection ceiling" in output, output
    assert "declared max_connections is 10" in output
    assert "PostgreSQL servers" not in output
    assert fingerprint() == before
