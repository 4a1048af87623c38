"""pgpool-II in front of the distribution's PostgreSQL (max_connections 100) ends "too many clients".

Each test asserts on live state: pgbench runs against the server directly and through
pgpool-II, SHOW pool_status answers through pgpool-II, pg_stat_activity is sampled during the
run, the files on disk are what the role promised. The sizes are what the role computed for
one node in front of max_connections 100 with one application user: (100 - 3 superuser slots
- 2 check connections - 2 closing margin) = 93 children of one pooled connection each.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

BENCH_PASSWORD = "headroom-bench:only"  # molecule.yml group_vars
CHECK_PASSWORD = "headroom-check-only"
POOL_KEY = "headroom-test-key-only"
PORT = 9999
NUM_INIT_CHILDREN = 93
MAX_POOL = 1
SCENARIO = Path(__file__).resolve().parents[1]
PROJECT = SCENARIO.parents[1]
# The runs of the role below go to one platform each, side by side, to keep the scenario short.
REFUSAL_HOST = "headroom-pgpool-debian12"
RELOAD_HOST = "headroom-pgpool-debian13"


def name(host):
    return host.backend.get_hostname()


def cluster(host):
    clusters = json.loads(host.check_output("pg_lsclusters --json"))
    assert len(clusters) == 1, clusters
    return clusters[0]


def pool_status(host):
    """SHOW pool_status through pgpool-II's socket, as the health check user (password from the environment)."""
    out = host.check_output(
        "env PGPASSWORD=%s psql -XAt -h /var/run/postgresql -p %s -U pgpool_check -d postgres -c 'SHOW pool_status'",
        CHECK_PASSWORD, str(PORT),
    )
    return {line.split("|")[0]: line.split("|")[1] for line in out.splitlines()}


def main_pid(host):
    return int(host.check_output("systemctl show --property=MainPID --value pgpool2.service"))


def checksums(host):
    return host.check_output("sha1sum /etc/pgpool2/pgpool.conf /etc/pgpool2/pool_hba.conf /etc/pgpool2/pool_passwd")


def playbook(host, extra_vars, *args):
    """Run converge.yml on this host alone with molecule's inventory and config; stdout holds all output."""
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    command = ["ansible-playbook", "-i", str(ephemeral / "inventory"), str(SCENARIO / "converge.yml"),
               "--limit", name(host), "-e", json.dumps(extra_vars), *args]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ephemeral / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600, check=False)


def pgbench(host, clients, port, options, sample=False):
    """pgbench -S on the bench database as bench (SCRAM over TCP), optionally sampling the server's backends.

    Every 0.1 s the sampler writes the number of client backends on the bench database (any
    user); it runs as postgres on the postgres database, so it never counts itself.
    """
    binary = f"/usr/lib/postgresql/{cluster(host)['version']}/bin/pgbench"
    sampler = (
        "rm -f /tmp/samples; touch /tmp/sampling; "
        "( while [ -e /tmp/sampling ]; do runuser -u postgres -- psql -XAtq -c "
        "\"SELECT count(*) FROM pg_stat_activity WHERE datname = 'bench' AND backend_type = 'client backend'\" "
        ">> /tmp/samples; sleep 0.1; done ) & "
    )
    script = (
        "ulimit -n 8192; "
        + (sampler if sample else "")
        + f"env PGPASSWORD='{BENCH_PASSWORD}' timeout 240 {binary} --host=127.0.0.1 --username=bench --port={port}"
        f" --no-vacuum --select-only --client={clients} {options} bench; rc=$?; "
        + ("rm -f /tmp/sampling; wait; " if sample else "")
        + "exit $rc"
    )
    result = host.run("bash -c %s", script)
    samples = [int(line) for line in host.file("/tmp/samples").content_string.split()] if sample else []
    return result, samples


@pytest.fixture
def refusal_host(host):
    if name(host) != REFUSAL_HOST:
        pytest.skip(f"the refusals run on {REFUSAL_HOST}")
    return host


@pytest.fixture
def reload_host(host):
    if name(host) != RELOAD_HOST:
        pytest.skip(f"the reload and restart run on {RELOAD_HOST}")
    return host


def test_direct_clients_beyond_max_connections_are_refused(host):
    # 150 sessions at once on a server of max_connections 100 (97 for ordinary roles).
    result, _samples = pgbench(host, 150, cluster(host)["port"], "--jobs=4 --time=3")
    assert result.rc != 0, result.stdout
    assert re.search(r"remaining connection slots are reserved|too many clients already", result.stderr), result.stderr


def test_show_pool_status_runs_the_sized_values(host):
    live = pool_status(host)
    assert (live["num_init_children"], live["max_pool"]) == (str(NUM_INIT_CHILDREN), str(MAX_POOL))
    # Clients beyond the children queue (reserved_connections 0) in a backlog of 93 x 11 >= 1000.
    assert live["reserved_connections"] == "0"
    assert live["listen_backlog_multiplier"] == "11"
    assert (live["port"], live["listen_addresses"]) == (str(PORT), "127.0.0.1")
    assert live["enable_pool_hba"] == "1" and live["allow_clear_text_frontend_auth"] == "0"
    assert live["health_check_user"] == live["sr_check_user"] == "pgpool_check"
    assert live["health_check_period"] == "10" and live["failover_on_backend_error"] == "0"
    assert live["pool_passwd"] == "/etc/pgpool2/pool_passwd"


def test_the_backend_is_up_and_the_primary(host):
    out = host.check_output(
        "env PGPASSWORD=%s psql -XAt -h /var/run/postgresql -p %s -U pgpool_check -d postgres -c 'SHOW pool_nodes'",
        CHECK_PASSWORD, str(PORT),
    )
    fields = out.split("|")
    assert fields[1:4] == ["127.0.0.1", "5432", "up"], out
    assert "primary" in fields, out


def test_1000_clients_through_pgpool_all_succeed_within_children_times_pool(host):
    # -C: pgpool-II serves one client per child for its whole session, so each transaction
    # reconnects and frees its child; one thread per client, so that no thread blocked in a
    # queued connect holds children for the clients it already connected.
    result, samples = pgbench(host, 1000, PORT, "--connect --jobs=1000 --transactions=1", sample=True)
    print(result.stdout)
    print(f"client backends on bench over {len(samples)} samples: max {max(samples)}")
    assert result.rc == 0, result.stderr
    assert "number of clients: 1000" in result.stdout
    assert re.search(r"^number of failed transactions: 0 \(0\.000%\)$", result.stdout, re.M), result.stdout
    assert "number of transactions actually processed: 1000/1000" in result.stdout, result.stdout
    assert "too many clients" not in result.stderr, result.stderr
    assert len(samples) >= 3, samples
    assert 0 < max(samples) <= NUM_INIT_CHILDREN * MAX_POOL, samples


def test_clients_beyond_num_init_children_wait_instead_of_failing(refusal_host):
    # 20 more sessions than children, each holding its child for 2 s: the last 20 wait in the
    # listen queue for a child and then run; none is refused. On one platform (the 1000
    # clients above queue on both): the other runs the reload and restart meanwhile.
    host = refusal_host
    sessions = NUM_INIT_CHILDREN + 20
    script = (
        f"export PGPASSWORD='{BENCH_PASSWORD}'; start=$(date +%s); "
        f"for i in $(seq {sessions}); do psql -XAtq -h 127.0.0.1 -p {PORT} -U bench -d bench "
        "-c 'SELECT pg_sleep(2)' >/dev/null 2>>/tmp/queue.err & done; "
        "ok=0; for job in $(jobs -p); do wait $job && ok=$((ok + 1)); done; "
        "echo \"$ok $(( $(date +%s) - start ))\""
    )
    host.run("rm -f /tmp/queue.err")
    ok, elapsed = map(int, host.check_output("bash -c %s", script).split())
    assert ok == sessions, host.file("/tmp/queue.err").content_string
    assert elapsed >= 4, elapsed  # the queued ones ran after a first child was free again


def test_a_wrong_password_is_refused(host):
    result = host.run("env PGPASSWORD=wrong psql -XAtq -h 127.0.0.1 -p %s -U bench -d bench -c 'SELECT 1'", str(PORT))
    assert result.rc != 0
    assert "authentication failed" in result.stderr or "password authentication failed" in result.stderr, result.stderr


def test_the_pool_key_is_private_to_the_service_user(host):
    key = host.file("/var/lib/postgresql/.pgpoolkey")
    assert (key.user, key.group, key.mode) == ("postgres", "postgres", 0o600)
    assert key.content_string.strip() == POOL_KEY


def test_pool_passwd_holds_aes_passwords_only_private_to_the_service_user(host):
    passwd = host.file("/etc/pgpool2/pool_passwd")
    assert (passwd.user, passwd.group, passwd.mode) == ("postgres", "postgres", 0o600)
    lines = passwd.content_string.split()
    assert sorted(line.split(":", 1)[0] for line in lines) == ["bench", "pgpool_check"]
    assert all(re.fullmatch(r"[a-z_]+:AES[A-Za-z0-9+/=]+", line) for line in lines), lines


def test_no_plain_text_password_on_disk(host):
    for secret in (BENCH_PASSWORD, CHECK_PASSWORD):
        found = host.run("grep -rlF -- %s /etc /var/lib/postgresql /var/log /usr/local /root /tmp", secret)
        assert found.stdout == "", found.stdout


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        ("", None),
        ("num_init_children = '0'", "outside the valid range"),
        ("num_init_childern = '3'", 'unrecognized configuration parameter "num_init_childern"'),
    ],
)
def test_the_candidate_check_refuses_what_pgpool_cannot_load(host, edit, complaint):
    before = main_pid(host)
    result = host.run(
        "cp /etc/pgpool2/pgpool.conf /tmp/candidate.conf && echo %s >> /tmp/candidate.conf"
        " && /usr/local/lib/headroom/pgpool-check-config /tmp/candidate.conf",
        edit,
    )
    if complaint is None:
        assert result.rc == 0, result.stderr
        assert "loads" in result.stdout
    else:
        assert result.rc == 1, result.stdout
        assert complaint in result.stderr, result.stderr
    # The live pgpool-II never met the throwaway one.
    assert main_pid(host) == before
    assert pool_status(host)["num_init_children"] == str(NUM_INIT_CHILDREN)


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        ({"pgpool_port": 70000}, "pgpool_port 70000 is not allowed: it must be an integer from 1 to 65535."),
        ({"pgpool_num_init_children": 500},
         "pgpool_num_init_children 500, pgpool_max_pool 0, pgpool_nodes 1: 1 pgpool-II node(s) x num_init_children 500"
         " x max_pool 1 = 500 connections do not fit backend headroom-pgpool-debian12:5432: max_connections 100"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(refusal_host, extra_vars, message):
    before = (checksums(refusal_host), main_pid(refusal_host))
    run = playbook(refusal_host, extra_vars)
    assert run.returncode != 0, run.stdout
    assert message in re.sub(r"\s+", " ", run.stdout), run.stdout
    assert (checksums(refusal_host), main_pid(refusal_host)) == before


def test_a_reload_applies_what_it_can_and_the_rest_waits_for_an_allowed_restart(reload_host):
    before = main_pid(reload_host)
    # -vvv: the run that rewrites pgpool.conf and reloads shows every task's arguments and
    # results, and still no password or key (no_log, passwords on stdin).
    run = playbook(reload_host, {"pgpool_client_idle_limit": 300, "pgpool_num_init_children": 40}, "-vvv")
    assert run.returncode == 0, run.stdout
    for secret in (BENCH_PASSWORD, CHECK_PASSWORD, POOL_KEY):
        assert secret not in run.stdout
    assert "PENDING RESTART" in run.stdout and "num_init_children" in run.stdout, run.stdout
    live = pool_status(reload_host)
    # client_idle_limit went live by the reload; num_init_children waits, in the same process.
    assert (live["client_idle_limit"], live["num_init_children"]) == ("300", str(NUM_INIT_CHILDREN))
    assert main_pid(reload_host) == before

    run = playbook(reload_host, {"pgpool_client_idle_limit": 300, "pgpool_num_init_children": 40,
                                 "pgpool_allow_restart": True})
    assert run.returncode == 0, run.stdout
    assert "Restarting pgpool2.service for num_init_children" in run.stdout, run.stdout
    live = pool_status(reload_host)
    assert (live["client_idle_limit"], live["num_init_children"]) == ("300", "40")
    assert main_pid(reload_host) != before
