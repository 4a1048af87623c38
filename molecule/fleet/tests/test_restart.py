"""playbooks/restart.yml on the fleet: rolling order, PgBouncer paused around each restart, failures stop it.

Each test makes a restart pending by hand (ALTER SYSTEM of a setting that needs one, then a
reload), runs the playbook and checks the live servers: postmaster start times, running
values, replication, PgBouncer's pause state and what pgbench saw. Runs after test_fleet.py.
"""

import json
import re
import subprocess
import time

import pytest
from test_fleet import DB1, DB2, PASSWORD, PGB1, PGB2, PROJECT, node, playbook, playbook_command, sql

RESTART_ONLY = "track_activity_query_size"  # needs a restart, and headroom does not manage it


def start_time(server):
    return sql(server, "SELECT extract(epoch FROM pg_postmaster_start_time())")


def make_pending(server, name, value):
    sql(server, f"ALTER SYSTEM SET {name} = '{value}'")
    sql(server, "SELECT pg_reload_conf()")
    for _attempt in range(50):
        if sql(server, f"SELECT pending_restart FROM pg_settings WHERE name = '{name}'") == "t":
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} = {value} did not become pending on {server}")


def wait_streaming():
    for _attempt in range(150):
        if sql(DB1, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1":
            return
        time.sleep(0.2)
    raise AssertionError(f"{DB2} does not stream from {DB1} after the restarts")


def paused(pooler, database):
    out = node(pooler).check_output("/usr/local/lib/headroom/pgbouncer-console pgbouncer.service %s", "SHOW DATABASES")
    return next(row["paused"] for row in json.loads(out)["rows"] if row["name"] == database) == "1"


@pytest.fixture
def pending_reset():
    """Undo the test's ALTER SYSTEM values and restart again, so the next test starts clean."""
    yield
    for server in (DB1, DB2):
        # Not RESET ALL: the standby's primary_conninfo lives in postgresql.auto.conf too.
        for name in (RESTART_ONLY, "max_connections"):
            sql(server, f"ALTER SYSTEM RESET {name}")
        sql(server, "SELECT pg_reload_conf()")
    result = playbook("restart.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout + result.stderr, result.stdout + result.stderr
    wait_streaming()


def test_a_restart_under_pgbench_through_pgbouncer_fails_no_transaction(pending_reset):
    node(DB1).check_output(f"PGPASSWORD={PASSWORD} pgbench -h {PGB1} -p 6432 -U app --initialize --scale=1 --quiet appdb")
    make_pending(DB1, RESTART_ONLY, "2kB")
    before = {server: start_time(server) for server in (DB1, DB2)}

    # pgbench from the primary's container, through PgBouncer on pgb1, back to the primary.
    load = subprocess.Popen(
        ["docker", "exec", "-e", f"PGPASSWORD={PASSWORD}", DB1, "pgbench", "-h", PGB1, "-p", "6432", "-U", "app",
         "--client=8", "--jobs=2", "--time=40", "--progress=1", "appdb"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    time.sleep(5)
    result = playbook("restart.yml")
    output, _stderr = load.communicate(timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    # Only the primary waits: the standby waves are empty, and a clean run warns of nothing.
    assert "[WARNING]" not in result.stdout + result.stderr, result.stdout + result.stderr
    assert start_time(DB1) != before[DB1]  # the primary restarted under load
    assert start_time(DB2) == before[DB2]  # nothing waited on the standby: left alone
    assert sql(DB1, f"SHOW {RESTART_ONLY}") == "2kB"
    assert load.returncode == 0, output
    processed = int(re.search(r"number of transactions actually processed: (\d+)", output).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", output)
    assert processed > 0, output
    assert failed is None or int(failed.group(1)) == 0, output
    assert "error" not in output.lower(), output
    assert not paused(PGB1, "appdb") and not paused(PGB2, "appdb")


def test_a_primary_that_lowers_max_connections_restarts_before_its_standby(pending_reset):
    lower = int(sql(DB1, "SHOW max_connections")) - 2
    for server in (DB1, DB2):
        make_pending(server, "max_connections", lower)

    result = playbook("restart.yml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert float(start_time(DB1)) < float(start_time(DB2))  # primary first, then the standby follows it down
    for server in (DB1, DB2):
        assert int(sql(server, "SHOW max_connections")) == lower
    wait_streaming()


def test_a_standby_that_raises_max_connections_restarts_before_its_primary(pending_reset):
    higher = int(sql(DB1, "SHOW max_connections")) + 2
    for server in (DB1, DB2):
        make_pending(server, "max_connections", higher)

    result = playbook("restart.yml")

    assert result.returncode == 0, result.stdout + result.stderr
    assert float(start_time(DB2)) < float(start_time(DB1))  # the standby first, so it never runs below its primary
    for server in (DB1, DB2):
        assert int(sql(server, "SHOW max_connections")) == higher
    wait_streaming()


def test_a_pause_that_cannot_complete_resumes_pgbouncer_and_restarts_nothing(pending_reset):
    make_pending(DB1, RESTART_ONLY, "3kB")
    before = start_time(DB1)
    # A query through pgb2 holds its server connection longer than the pause may take.
    holder = subprocess.Popen(
        ["docker", "exec", "-e", f"PGPASSWORD={PASSWORD}", PGB2, "psql", "-X", "-h", "127.0.0.1", "-p", "6432",
         "-U", "app", "-d", "appdb", "-c", "SELECT pg_sleep(60)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        result = playbook("restart.yml", "-e", "postgresql_tuning_pause_timeout=5")
    finally:
        sql(DB1, "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'")
        holder.wait(timeout=30)

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "did not complete within 5" in output
    assert start_time(DB1) == before  # not restarted
    assert sql(DB1, "SELECT pending_restart FROM pg_settings WHERE name = %r" % RESTART_ONLY) == "t"
    assert not paused(PGB1, "appdb") and not paused(PGB2, "appdb")  # no client stays paused
    node(PGB1).check_output(f"PGPASSWORD={PASSWORD} psql -XAtq -h 127.0.0.1 -p 6432 -U app -d appdb -c 'SELECT 1'")


def test_a_standby_unreachable_in_the_roll_stops_it_before_its_primary(pending_reset):
    higher = int(sql(DB1, "SHOW max_connections")) + 2
    for server in (DB1, DB2):
        make_pending(server, "max_connections", higher)
    before = start_time(DB1)

    # The standby goes first; it stops answering the moment the rolling play starts.
    command, env = playbook_command("restart.yml")
    # Unpipelined, each module goes to the host as a file first, and the docker connection reports the
    # paused container unreachable, as SSH does a host that stops answering. Pipelined, the docker
    # daemon's refusal comes back as the module's output, a task failure.
    env["ANSIBLE_PIPELINING"] = "False"
    lines = []
    with subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as run:
        try:
            for line in run.stdout:
                lines.append(line)
                if line.startswith("PLAY [Restart, one server at a time"):
                    subprocess.run(["docker", "pause", DB2], check=True)
            run.wait(timeout=300)
        finally:
            subprocess.run(["docker", "unpause", DB2], check=False)
    output = "".join(lines)

    assert run.returncode != 0, output
    assert "UNREACHABLE" in output, output
    assert start_time(DB1) == before, output  # the host after the failure was not touched
    assert sql(DB1, "SELECT pending_restart FROM pg_settings WHERE name = 'max_connections'") == "t"
