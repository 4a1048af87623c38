"""PgBouncer in front of the distribution's PostgreSQL ends "sorry, too many clients already".

Each test asserts on live state: pgbench runs against the server directly and through
PgBouncer, the admin console answers, the files on disk are what the role promised.
The pool sizes below are the ones converge.yml asks for (server_cpus 2 -> 2 x 2 + 1).
"""

import json
import re

import pytest

PASSWORD = "headroom-bench-only"  # group_vars bench_password in molecule.yml
POOL_SIZE = 5
RESERVE_POOL_SIZE = 2
MAX_CLIENT_CONN = 1200
PGBOUNCER_PORT = 6432
TRANSACTIONS = 20  # per pgbench client through PgBouncer


def cluster(host):
    clusters = json.loads(host.check_output("pg_lsclusters --json"))
    assert len(clusters) == 1, clusters
    return clusters[0]


def console(host, command):
    """Rows of an admin console command, read the way the role reads them."""
    out = host.check_output("/usr/local/lib/headroom/pgbouncer-console pgbouncer.service %s", command)
    return json.loads(out)["rows"]


def pgbench(host, clients, port, run, sample=False, superuser=False):
    """Run pgbench -S on the bench database (``run``: --time=N or --transactions=N per client).

    Optionally samples the server's backends meanwhile.
    As the bench role it logs in with SCRAM over TCP; as the superuser postgres, by peer
    over the socket. Every 0.1 s the sampler writes "<bench role's backends>|<all client
    backends>" on the bench database; it connects to the postgres database, so it never
    counts itself.
    """
    c = cluster(host)
    binary = f"/usr/lib/postgresql/{c['version']}/bin/pgbench"
    sampler = (
        "rm -f /tmp/samples; touch /tmp/sampling; "
        "( while [ -e /tmp/sampling ]; do runuser -u postgres -- psql -XAtq -c "
        "\"SELECT count(*) FILTER (WHERE usename = 'bench'), count(*) FROM pg_stat_activity "
        "WHERE datname = 'bench' AND backend_type = 'client backend'\" "
        ">> /tmp/samples; sleep 0.1; done ) & "
    )
    login = (
        f"runuser -u postgres -- {binary} --host={c['socketdir']}"
        if superuser
        else f"env PGPASSWORD={PASSWORD} {binary} --host=127.0.0.1 --username=bench"
    )
    script = (
        "ulimit -n 8192; "
        + (sampler if sample else "")
        + f"timeout 120 {login} --port={port} --no-vacuum --select-only --client={clients} --jobs=4 "
        f"{run} bench; rc=$?; "
        + ("rm -f /tmp/sampling; wait; " if sample else "")
        + "exit $rc"
    )
    result = host.run("bash -c %s", script)
    samples = []
    if sample:
        samples = [tuple(map(int, line.split("|"))) for line in host.file("/tmp/samples").content_string.split()]
    return result, samples


# max_connections is 100 with 3 slots reserved for superusers: an ordinary role is turned
# away at the 98th connection ("remaining connection slots are reserved ..."), a superuser
# at the 101st with "sorry, too many clients already". Both are the failure PgBouncer ends.
@pytest.mark.parametrize(
    "superuser, message",
    [
        (True, "sorry, too many clients already"),
        (False, "remaining connection slots are reserved"),
    ],
)
def test_direct_500_clients_run_out_of_connection_slots(host, superuser, message):
    result, _ = pgbench(host, 500, cluster(host)["port"], "--time=5", superuser=superuser)
    assert result.rc != 0, result.stdout
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("clients", [500, 1000])
def test_pgbouncer_serves_every_client_within_the_pool(host, clients):
    result, samples = pgbench(host, clients, PGBOUNCER_PORT, f"--transactions={TRANSACTIONS}", sample=True)
    print(result.stdout)
    bench_max = max(sample[0] for sample in samples)
    total_max = max(sample[1] for sample in samples)
    print(f"backends on bench over {len(samples)} samples: bench role max {bench_max}, all max {total_max}")
    assert result.rc == 0, result.stderr
    assert f"number of clients: {clients}" in result.stdout
    assert re.search(r"^number of failed transactions: 0 \(0\.000%\)$", result.stdout, re.M), result.stdout
    assert "error" not in result.stderr.lower(), result.stderr
    # Every client ran all its transactions: none was turned away or dropped.
    total = clients * TRANSACTIONS
    assert f"number of transactions actually processed: {total}/{total}" in result.stdout, result.stdout
    # The bench role's pool holds at most pool + reserve server connections. The auth
    # user's lookup pool shares the entry's max_db_connections, sized by the engine for
    # both pools: (pool + reserve) x 2. The sampler sits in the postgres database.
    assert 0 < bench_max <= POOL_SIZE + RESERVE_POOL_SIZE, samples
    assert total_max <= (POOL_SIZE + RESERVE_POOL_SIZE) * 2, samples


def test_show_config_has_the_managed_values_live(host):
    live = {row["key"]: row["value"] for row in console(host, "SHOW CONFIG")}
    assert live["auth_type"] == "scram-sha-256"
    assert live["pool_mode"] == "transaction"
    assert live["max_client_conn"] == str(MAX_CLIENT_CONN)
    assert live["default_pool_size"] == str(POOL_SIZE)
    assert live["listen_addr"] == "127.0.0.1"
    assert live["auth_query"] == "SELECT username, password FROM pgbouncer.get_auth($1)"


def test_show_databases_and_pools_show_the_configured_pool(host):
    bench = next(row for row in console(host, "SHOW DATABASES") if row["name"] == "bench")
    assert int(bench["pool_size"]) == POOL_SIZE
    pools = [row for row in console(host, "SHOW POOLS") if row["database"] == "bench"]
    assert pools, "no pool for bench"
    for pool in pools:
        servers = sum(int(pool[key]) for key in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
        assert servers <= POOL_SIZE + RESERVE_POOL_SIZE, pool


def test_file_descriptor_limit_covers_max_client_conn(host):
    pid = host.check_output("systemctl show --property=MainPID --value pgbouncer.service")
    limits = host.file(f"/proc/{pid}/limits").content_string
    soft = int(re.search(r"^Max open files\s+(\d+)", limits, re.M).group(1))
    assert soft > MAX_CLIENT_CONN
    report = host.check_output("grep -h 'kernel file descriptor limit' /var/log/postgresql/pgbouncer.log | tail -n 1")
    limit, expected = re.search(r"limit: (\d+) .* max expected fd use: (\d+)", report).groups()
    assert int(limit) >= int(expected), report


def test_userlist_holds_only_scram_verifiers(host):
    lines = [
        line
        for line in host.file("/etc/pgbouncer/userlist.txt").content_string.splitlines()
        if line.strip() and not line.startswith(";")
    ]
    assert lines, "the stats user should be in the userlist"
    for line in lines:
        user, secret = re.fullmatch(r'"([^"]+)" "([^"]+)"', line).groups()
        assert secret.startswith("SCRAM-SHA-256$"), user


@pytest.mark.parametrize("path", ["/etc/pgbouncer/pgbouncer.ini", "/etc/pgbouncer/userlist.txt"])
def test_config_files_belong_to_the_service_user(host, path):
    f = host.file(path)
    assert f.user == "postgres"
    assert f.mode == 0o640


def test_config_dir_is_not_world_readable(host):
    assert host.file("/etc/pgbouncer").mode & 0o007 == 0


def test_auth_function_is_locked_down(host):
    out = host.check_output(
        "runuser -u postgres -- psql -XAt -d bench -c %s",
        "SELECT p.prosecdef, p.proconfig::text, "
        "has_function_privilege('pgbouncer_auth', p.oid, 'EXECUTE'), "
        "coalesce((SELECT bool_or(a.grantee = 0) FROM aclexplode(p.proacl) a), true) "
        "FROM pg_proc p WHERE p.oid = 'pgbouncer.get_auth(text)'::regprocedure",
    )
    assert out == "t|{\"search_path=pg_catalog, pg_temp\"}|t|f"


def test_auth_user_has_no_password(host):
    out = host.check_output(
        "runuser -u postgres -- psql -XAt -c %s",
        "SELECT rolcanlogin, rolsuper, rolpassword IS NULL FROM pg_authid WHERE rolname = 'pgbouncer_auth'",
    )
    assert out == "t|f|t"


def test_wrong_password_is_refused(host):
    result = host.run(
        "PGCONNECT_TIMEOUT=10 PGPASSWORD=wrong psql -XAtq -h 127.0.0.1 -p %s -U bench -d bench -c 'SELECT 1'",
        str(PGBOUNCER_PORT),
    )
    assert result.rc != 0
    assert "authentication failed" in result.stderr


def test_non_admin_is_refused_on_the_console(host):
    result = host.run(
        "PGCONNECT_TIMEOUT=10 PGPASSWORD=%s psql -XAtq -h 127.0.0.1 -p %s -U bench -d pgbouncer -c 'SHOW POOLS'",
        PASSWORD,
        str(PGBOUNCER_PORT),
    )
    assert result.rc != 0
    assert result.stdout == ""


def test_stats_user_reads_the_console(host):
    result = host.run(
        "PGCONNECT_TIMEOUT=10 PGPASSWORD=%s psql -XAtq -h 127.0.0.1 -p %s -U monitor -d pgbouncer -c 'SHOW POOLS'",
        PASSWORD,
        str(PGBOUNCER_PORT),
    )
    assert result.rc == 0, result.stderr


@pytest.mark.parametrize(
    "edit, loads",
    [
        ("", True),
        ("s/^pool_mode = .*/pool_mode = bogus/", False),
        ("s/^max_client_conn = /max_clinet_conn = /", False),
        ("s/ dbname=/ dbnmae=/", False),
    ],
)
def test_candidate_check_refuses_a_file_pgbouncer_cannot_load(host, edit, loads):
    """The validate step of the role: a throwaway PgBouncer on a copy of the live file."""
    result = host.run(
        "f=$(mktemp) && cp /etc/pgbouncer/pgbouncer.ini $f && sed -i %s $f && "
        "/usr/local/lib/headroom/pgbouncer-check-config $f postgres; rc=$?; rm -f $f; exit $rc",
        edit or "s/^//",
    )
    assert (result.rc == 0) == loads, result.stdout + result.stderr
    if not loads:
        assert "cannot load config file" in result.stderr
