"""PgBouncer in front of the distribution's PostgreSQL ends "sorry, too many clients already".

Each test asserts on live state: pgbench runs against the server directly and through
PgBouncer, the admin console answers, the files on disk are what the role promised.
The pool sizes below are the ones the scenario's group_vars ask for (server_cpus 2 -> 4 x 2 + 4).
"""

import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import pytest

PASSWORD = "headroom-bench-only"  # group_vars bench_password in molecule.yml
POOL_SIZE = 12
RESERVE_POOL_SIZE = 2
MAX_CLIENT_CONN = 1200
PGBOUNCER_PORT = 6432
TRANSACTIONS = 20  # per pgbench client through PgBouncer
# host_vars in molecule.yml: Debian 13 and forky (PgBouncer 1.24 and 1.26, [peers]) run two processes.
PROCESSES = {"headroom-pgbouncer-debian12": 1, "headroom-pgbouncer-debian13": 2, "headroom-pgbouncer-forky": 2}
# The faults below run ansible-playbook against one platform only, to keep the scenario short.
FAULT_HOST = "headroom-pgbouncer-debian12"
SCENARIO = Path(__file__).resolve().parents[1]
PROJECT = SCENARIO.parents[1]


def cluster(host):
    clusters = json.loads(host.check_output("pg_lsclusters --json"))
    assert len(clusters) == 1, clusters
    return clusters[0]


def pgbench_binary(host):
    return f"/usr/lib/postgresql/{cluster(host)['version']}/bin/pgbench"


def units(host):
    """The PgBouncer units that run: pgbouncer.service, or pgbouncer@<n>.service for several."""
    out = host.check_output(
        "systemctl list-units --plain --no-legend --state=active pgbouncer.service 'pgbouncer@*.service'"
    )
    return sorted(line.split()[0] for line in out.splitlines() if line.strip())


def ini_of(unit):
    number = re.fullmatch(r"pgbouncer@(\d+)\.service", unit)
    return f"/etc/pgbouncer/pgbouncer-{number.group(1)}.ini" if number else "/etc/pgbouncer/pgbouncer.ini"


def console(host, command, unit="pgbouncer.service"):
    """Rows of an admin console command, read the way the role reads them."""
    out = host.check_output("/usr/local/lib/headroom/pgbouncer-console %s %s", unit, command)
    return json.loads(out)["rows"]


def live_config(host, unit):
    return {row["key"]: row["value"] for row in console(host, "SHOW CONFIG", unit)}


def main_pid(host, unit):
    return int(host.check_output("systemctl show --property=MainPID --value %s", unit))


def name(host):
    return host.backend.get_hostname()


def playbook(host, *args, path=SCENARIO / "converge.yml", popen=False):
    """Run converge.yml on this host alone with molecule's inventory and config; stdout holds all output."""
    return ansible_playbook(path, "--limit", name(host), *args, popen=popen)


def ansible_playbook(path, *args, inventories=(), popen=False):
    """Run a playbook with molecule's inventory (then ``inventories``) and config; stdout holds all output.
    With ``popen``, start it and return the running process."""
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    command = ["ansible-playbook", "-i", str(ephemeral / "inventory")]
    for extra in inventories:
        command += ["-i", str(extra)]
    command += [str(path), *args]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ephemeral / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    if popen:
        return subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900, check=False)


@pytest.fixture
def fault_host(host):
    """The faults change the live PgBouncer; they run on the single-process platform only."""
    if name(host) != FAULT_HOST:
        pytest.skip(f"the fault runs on {FAULT_HOST}")
    return host


@pytest.fixture
def multi_host(host):
    if PROCESSES[name(host)] == 1:
        pytest.skip("this platform runs one PgBouncer process")
    return host


def wait_until_no_session_holds(host, database, seconds=30):
    """Wait until no client backend is connected to ``database`` (a superuser check, retried while slots are full)."""
    query = f"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname = '{database}'"
    for _attempt in range(seconds * 5):
        check = host.run("runuser -u postgres -- psql -XAtq -c %s", query)
        if check.rc == 0 and check.stdout.strip() == "0":
            return
        time.sleep(0.2)
    raise AssertionError(f"sessions on {database} did not end within {seconds} s")


def pgbench(host, clients, port, run, sample=False, superuser=False):
    """Run pgbench -S on the bench database (``run``: --time=N or --transactions=N per client).

    Optionally samples the server's backends meanwhile.
    As the bench role it logs in with SCRAM over TCP; as the superuser postgres, by peer
    over the socket. Every 0.1 s the sampler writes "<bench role's backends>|<all client
    backends>" on the bench database; it connects to the postgres database, so it never
    counts itself.
    """
    c = cluster(host)
    binary = pgbench_binary(host)
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
    # The other case's 500 clients may still hold slots while their backends exit: with every slot
    # taken, an ordinary role also gets "sorry, too many clients already".
    wait_until_no_session_holds(host, "bench")
    result, _samples = pgbench(host, 500, cluster(host)["port"], "--time=5", superuser=superuser)
    assert result.rc != 0, result.stdout
    assert message in result.stderr, result.stderr


def test_the_expected_processes_run(host):
    expected = PROCESSES[name(host)]
    want = ["pgbouncer.service"] if expected == 1 else [f"pgbouncer@{n}.service" for n in range(1, expected + 1)]
    assert units(host) == want


@pytest.mark.parametrize("clients", [500, 1000])
def test_pgbouncer_serves_every_client_within_the_pool(host, clients):
    processes = PROCESSES[name(host)]
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
    # Each process's bench pool holds at most pool + reserve server connections. The auth
    # user's lookup pool shares the entry's max_db_connections, sized by the engine for
    # both pools: (pool + reserve) x 2. The sampler sits in the postgres database.
    assert 0 < bench_max <= (POOL_SIZE + RESERVE_POOL_SIZE) * processes, samples
    assert total_max <= (POOL_SIZE + RESERVE_POOL_SIZE) * 2 * processes, samples


def test_show_config_has_the_managed_values_live(host):
    for unit in units(host):
        live = live_config(host, unit)
        assert live["auth_type"] == "scram-sha-256"
        assert live["pool_mode"] == "transaction"
        assert live["max_client_conn"] == str(MAX_CLIENT_CONN)
        assert live["default_pool_size"] == str(POOL_SIZE)
        assert live["listen_addr"] == "127.0.0.1"
        assert live["auth_query"] == "SELECT username, password FROM pgbouncer.get_auth($1)"
        assert live["log_connections"] == "1" and live["log_disconnections"] == "1"
        # molecule.yml: settings every version has, and the ones passed through.
        assert (live["query_timeout"], live["client_idle_timeout"]) == ("900", "3600")
        assert (live["stats_period"], live["server_check_delay"]) == ("30", "10")


# What each version has (filter pgbouncer_features; molecule.yml): SHOW CONFIG of 1.18 has no
# max_prepared_statements, 1.24 no transaction_timeout or query_wait_notify.
VERSION_SETTINGS = {
    "headroom-pgbouncer-debian12": {},
    "headroom-pgbouncer-debian13": {"max_prepared_statements": "200"},
    "headroom-pgbouncer-forky": {"max_prepared_statements": "200", "transaction_timeout": "0", "query_wait_notify": "3"},
}


def test_each_version_runs_the_version_dependent_settings_it_has(host):
    wanted = VERSION_SETTINGS[name(host)]
    for unit in units(host):
        live = live_config(host, unit)
        assert {key: live.get(key) for key in wanted} == wanted
        # What the role leaves out is what the version lacks: its SHOW CONFIG has no such key.
        lacking = {"max_prepared_statements", "transaction_timeout", "query_wait_notify"} - set(wanted)
        assert not lacking & set(live), (unit, sorted(lacking & set(live)))
        text = host.file(ini_of(unit)).content_string
        assert not any(re.search(rf"^{key} = ", text, re.M) for key in lacking), text


@pytest.fixture
def prepared_host(host):
    """PgBouncer 1.21+ keeps prepared statements across transaction pooling: Debian 13 (1.24) and forky (1.26)."""
    if pgbouncer_version(host) < (1, 21):
        pytest.skip("PgBouncer before 1.21 has no max_prepared_statements; the refusal is a fault on Debian 12")
    return host


def prepared_counts(host):
    """Client parses and server prepares over all processes (SHOW STATS, 1.21+)."""
    rows = [row for unit in units(host) for row in console(host, "SHOW STATS", unit) if row["database"] == "bench"]
    return (sum(int(row["total_client_parse_count"]) for row in rows),
            sum(int(row["total_server_parse_count"]) for row in rows))


def test_pgbench_prepared_statements_run_through_transaction_pooling(prepared_host):
    """pgbench -M prepared: each client prepares once and runs its statement in many transactions.

    50 clients share 12 server connections per process, so their transactions land on server
    connections that never saw the PREPARE; PgBouncer prepares it there again.
    """
    parses_before, prepares_before = prepared_counts(prepared_host)
    result = prepared_host.run(
        "env PGPASSWORD=%s %s --host=127.0.0.1 --port=%s --username=bench "
        "--no-vacuum --select-only --protocol=prepared --client=50 --jobs=2 --transactions=200 bench",
        PASSWORD, pgbench_binary(prepared_host), str(PGBOUNCER_PORT))
    print(result.stdout)
    assert result.rc == 0, result.stdout + result.stderr
    assert "number of transactions actually processed: 10000/10000" in result.stdout, result.stdout
    assert re.search(r"^number of failed transactions: 0 \(0\.000%\)$", result.stdout, re.M), result.stdout
    assert "does not exist" not in result.stderr, result.stderr
    parses, prepares = prepared_counts(prepared_host)
    print(f"client parses {parses - parses_before}, server prepares {prepares - prepares_before}")
    # Every client parsed its statement; PgBouncer prepared it on more server connections than one.
    assert parses - parses_before >= 50 and prepares - prepares_before > 1


PSYCOPG_PREPARED = """
import sys
import psycopg

# prepare_threshold 0: psycopg prepares every statement on its first execution (server-side,
# protocol level), then only sends Bind/Execute with the prepared statement's name.
conns = [psycopg.connect(host="127.0.0.1", port=6432, dbname="bench", user="bench", password=sys.argv[1],
                         autocommit=True, prepare_threshold=0) for _ in range(40)]
rows = 0
for round_ in range(25):
    for conn in conns:
        rows += conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (round_ * 40 + 1,)).fetchone() is not None
        with conn.transaction():
            conn.execute("SELECT count(*) FROM pgbench_branches WHERE bid = %s", (1,))
print(rows, all(conn.prepare_threshold == 0 for conn in conns))
"""


def test_psycopg_prepared_statements_run_through_transaction_pooling(prepared_host):
    """psycopg 3 (Debian's python3-psycopg): 40 connections prepare on first use, 2000 statements, no error."""
    parses_before, prepares_before = prepared_counts(prepared_host)
    result = prepared_host.run("python3 -c %s %s", PSYCOPG_PREPARED, PASSWORD)
    assert result.rc == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["1000", "True"], result.stdout
    parses, prepares = prepared_counts(prepared_host)
    print(f"client parses {parses - parses_before}, server prepares {prepares - prepares_before}")
    assert parses - parses_before >= 40 * 2 and prepares - prepares_before > 1


def test_listens_on_loopback_and_its_socket_only(host):
    """Every TCP listener on the port is 127.0.0.1 (kernel tables: no ss in the image)."""
    port = f"{PGBOUNCER_PORT:04X}"
    listeners = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in host.file(table).content_string.splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local.endswith(f":{port}"):
                listeners.append(local)
    assert listeners and set(listeners) == {f"0100007F:{port}"}, listeners
    for unit in units(host):
        socket_dir = live_config(host, unit)["unix_socket_dir"]
        assert host.file(f"{socket_dir}/.s.PGSQL.{PGBOUNCER_PORT}").is_socket


def test_show_databases_and_pools_show_the_configured_pool(host):
    for unit in units(host):
        bench = next(row for row in console(host, "SHOW DATABASES", unit) if row["name"] == "bench")
        assert int(bench["pool_size"]) == POOL_SIZE
        pools = [row for row in console(host, "SHOW POOLS", unit) if row["database"] == "bench"]
        assert pools, "no pool for bench"
        for pool in pools:
            servers = sum(int(pool[key]) for key in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"))
            assert servers <= POOL_SIZE + RESERVE_POOL_SIZE, pool


def test_file_descriptor_limit_covers_max_client_conn(host):
    for unit in units(host):
        limits = host.file(f"/proc/{main_pid(host, unit)}/limits").content_string
        soft = int(re.search(r"^Max open files\s+(\d+)", limits, re.M).group(1))
        assert soft > MAX_CLIENT_CONN
        logfile = live_config(host, unit)["logfile"]
        report = host.check_output("grep -h 'kernel file descriptor limit' %s | tail -n 1", logfile)
        limit, expected = re.search(r"limit: (\d+) .* max expected fd use: (\d+)", report).groups()
        assert int(limit) >= int(expected) > MAX_CLIENT_CONN, report


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


def test_config_files_belong_to_the_service_user(host):
    for path in [ini_of(unit) for unit in units(host)] + ["/etc/pgbouncer/userlist.txt"]:
        f = host.file(path)
        assert (f.user, f.mode) == ("postgres", 0o640), path


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


def test_auth_query_is_schema_qualified_and_checks_valid_until(host):
    source = host.check_output(
        "runuser -u postgres -- psql -XAt -d bench -c %s",
        "SELECT prosrc FROM pg_proc WHERE oid = 'pgbouncer.get_auth(text)'::regprocedure",
    )
    assert "rolvaliduntil" in source and "pg_catalog.pg_authid" in source
    for unit in units(host):
        assert live_config(host, unit)["auth_query"].startswith("SELECT username, password FROM pgbouncer.")


def login(host, user="bench", password=PASSWORD, dbname="bench", target=f"-h 127.0.0.1 -p {PGBOUNCER_PORT}"):
    return host.run(
        f"PGCONNECT_TIMEOUT=10 PGPASSWORD=%s timeout 30 psql -XAtq {target} -U %s -d %s -c 'SELECT 1'",
        password, user, dbname,
    )


def test_an_expired_role_is_refused(host):
    """VALID UNTIL in the past: refused through PgBouncer with the right password; control: back to no expiry."""
    sql = "runuser -u postgres -- psql -XAtq -c %s"
    host.check_output(sql, "ALTER ROLE bench VALID UNTIL '2001-01-01'")
    try:
        refused = login(host)
    finally:
        host.check_output(sql, "ALTER ROLE bench VALID UNTIL 'infinity'")
    assert refused.rc != 0 and "authentication failed" in refused.stderr, refused.stderr
    allowed = login(host)
    assert (allowed.rc, allowed.stdout.strip()) == (0, "1"), allowed.stderr


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
        "f=$(mktemp) && cp %s $f && sed -i %s $f && "
        "/usr/local/lib/headroom/pgbouncer-check-config $f postgres; rc=$?; rm -f $f; exit $rc",
        ini_of(units(host)[0]),
        edit or "s/^//",
    )
    assert (result.rc == 0) == loads, result.stdout + result.stderr
    if not loads:
        assert "cannot load config file" in result.stderr


# Each application's share (molecule.yml: pgbouncer_user_client_limits {leaky: 5},
# pgbouncer_database_client_limits {bench: 1100}). Every pool opens at most pool + reserve (14)
# server connections in a process, which is each named user's max_user_connections. PgBouncer
# 1.24+ also holds leaky to 5 client connections per process; 1.18 cannot (and before 1.23 a
# [users] line would stop auth_query for the user, so only the auth user has one there).
USER_SHARE = POOL_SIZE + RESERVE_POOL_SIZE
# host_vars pgbouncer_user_settings in molecule.yml: each user's own [users] settings, in the order
# the role writes them (sorted) after the shares.
USER_SETTINGS = {
    "headroom-pgbouncer-debian12": {},
    "headroom-pgbouncer-debian13": {
        "leaky": "client_idle_timeout=1800 idle_transaction_timeout=30 pool_size=4 query_timeout=1 reserve_pool_size=1"},
    "headroom-pgbouncer-forky": {
        "bench": "transaction_timeout=600",
        "leaky": "pool_size=4 query_timeout=1 query_wait_timeout=30 reserve_pool_size=1 transaction_timeout=2"},
}
LEAKY_CLIENT_LIMIT = 5
BENCH_CLIENT_LIMIT = 1100
CLIENT_LIMIT_REFUSAL = "client connections exceeded (max_user_client_connections)"


def pgbouncer_version(host):
    out = host.check_output("pgbouncer --version")
    return tuple(int(part) for part in re.search(r"PgBouncer (\d+)\.(\d+)", out).groups())


def ini_sections(host, unit):
    """{section: [lines]} of a unit's pgbouncer.ini, comments and blank lines left out, in file order."""
    sections, current = {}, None
    for line in host.file(ini_of(unit)).content_string.splitlines():
        if re.fullmatch(r"\[\w+\]", line):
            current = line[1:-1]
            sections[current] = []
        elif current and line.strip() and not line.startswith(";"):
            sections[current].append(line)
    return sections


def test_the_users_section_holds_each_users_share(host):
    client_limits = pgbouncer_version(host) >= (1, 24)
    own = {user: " " + settings for user, settings in USER_SETTINGS[name(host)].items()}
    if client_limits:
        users = [f"bench = max_user_connections={USER_SHARE}{own.get('bench', '')}",
                 f"leaky = max_user_connections={USER_SHARE} max_user_client_connections={LEAKY_CLIENT_LIMIT}"
                 f"{own.get('leaky', '')}",
                 f"pgbouncer_auth = max_user_connections={USER_SHARE}"]
    else:
        users = [f"pgbouncer_auth = max_user_connections={USER_SHARE}"]
    for unit in units(host):
        sections = ini_sections(host, unit)
        assert sections["users"] == users, sections
        assert list(sections)[-1] == "pgbouncer", list(sections)  # pgbouncer-check-config appends to it
        bench_line = next(line for line in sections["databases"] if line.startswith("bench = "))
        assert (f" max_db_client_connections={BENCH_CLIENT_LIMIT}" in bench_line) == client_limits, bench_line
        live = {row["name"]: row for row in console(host, "SHOW USERS", unit)}
        if client_limits:
            assert {name: (live[name]["max_user_connections"], live[name]["max_user_client_connections"])
                    for name in ("bench", "leaky", "pgbouncer_auth")} == {
                "bench": (str(USER_SHARE), "0"), "leaky": (str(USER_SHARE), str(LEAKY_CLIENT_LIMIT)),
                "pgbouncer_auth": (str(USER_SHARE), "0")}
            bench_db = next(row for row in console(host, "SHOW DATABASES", unit) if row["name"] == "bench")
            assert bench_db["max_client_connections"] == str(BENCH_CLIENT_LIMIT), bench_db
        else:
            # 1.18 prints no limits in SHOW USERS; the auth user's line made it a known user.
            assert "pgbouncer_auth" in live and "max_user_connections" not in live["pgbouncer_auth"], live


def test_a_users_own_settings_are_live(multi_host):
    """pgbouncer_user_settings: leaky's pool of 4 + 1 in SHOW USERS, and its own query_timeout of 1 s
    (bench keeps the global 900); on 1.26 leaky's transaction_timeout of 2 s too. bench's own
    transaction_timeout (600) on 1.26 is the auth_query-safe kind: the storm's 1000 logins pass with it."""
    host = multi_host
    for unit in units(host):
        leaky = next(row for row in console(host, "SHOW USERS", unit) if row["name"] == "leaky")
        # Printed padded ("%9d").
        assert (leaky["pool_size"].strip(), leaky["reserve_pool_size"].strip()) == ("4", "1"), leaky
    psql = f"env PGPASSWORD={PASSWORD} PGCONNECT_TIMEOUT=10 timeout 30 psql -XAtq -h 127.0.0.1 -p {PGBOUNCER_PORT} -d bench"
    slow = host.run(f"{psql} -U leaky -c 'SELECT pg_sleep(3)'")
    assert slow.rc != 0 and "query timeout" in slow.stderr, slow.stderr
    assert host.run(f"{psql} -U bench -c 'SELECT pg_sleep(2)'").rc == 0
    if pgbouncer_version(host) >= (1, 25):
        # One transaction (-1) of five statements, each shorter than the query_timeout.
        steps = " ".join(["-c 'SELECT pg_sleep(0.7)'"] * 5)
        long = host.run(f"{psql} -1 -U leaky {steps}")
        assert long.rc != 0 and "transaction timeout" in long.stderr, long.stderr


def leaky_clients(host, unit):
    return sum(1 for row in console(host, "SHOW CLIENTS", unit) if row["user"] == "leaky")


def test_a_leaking_application_gets_its_client_share_and_bench_still_runs(host):
    """leaky opens 8 sessions on one process and never closes them: 5 get in, 3 are refused with the
    limit's name; a 9th login is refused too, and pgbench as bench meanwhile runs without an error."""
    if pgbouncer_version(host) < (1, 24):
        pytest.skip("PgBouncer before 1.24 has no max_user_client_connections")
    unit = units(host)[0]
    socket_dir = live_config(host, unit)["unix_socket_dir"]
    psql = f"env PGPASSWORD={PASSWORD} psql -X -h {socket_dir} -p {PGBOUNCER_PORT} -U leaky -d bench"
    # One session (setsid) holds every leaked client: psql stays connected while its stdin (sleep) is open.
    leader = host.check_output(
        "rm -rf /tmp/leak && mkdir /tmp/leak && setsid sh -c %s >/dev/null 2>&1 & echo $!",
        f"for i in 1 2 3 4 5 6 7 8; do (sleep 120 | {psql} >/tmp/leak/$i.out 2>/tmp/leak/$i.err; "
        "echo $? >/tmp/leak/$i.rc) & sleep 0.1; done; wait",
    ).strip()
    try:
        for _attempt in range(50):
            refused = host.check_output("grep -l %s /tmp/leak/*.err 2>/dev/null | wc -l || true",
                                        CLIENT_LIMIT_REFUSAL).strip()
            if leaky_clients(host, unit) == LEAKY_CLIENT_LIMIT and refused == "3":
                break
            time.sleep(0.2)
        assert (leaky_clients(host, unit), refused) == (LEAKY_CLIENT_LIMIT, "3"), host.check_output(
            "tail -n +1 /tmp/leak/*.err")
        ninth = host.run(f"PGCONNECT_TIMEOUT=10 timeout 30 {psql} -Atc 'SELECT 1'")
        assert ninth.rc != 0 and f"FATAL:  {CLIENT_LIMIT_REFUSAL}" in ninth.stderr, ninth.stderr
        result, _samples = pgbench(host, 100, PGBOUNCER_PORT, f"--transactions={TRANSACTIONS}")
        print(result.stdout)
        assert result.rc == 0, result.stderr
        assert re.search(r"^number of failed transactions: 0 \(0\.000%\)$", result.stdout, re.M), result.stdout
        assert f"number of transactions actually processed: {100 * TRANSACTIONS}/{100 * TRANSACTIONS}" in result.stdout
        assert "error" not in result.stderr.lower(), result.stderr
        # The leak was there the whole time: still 5, as SHOW USERS counts them too.
        user = next(row for row in console(host, "SHOW USERS", unit) if row["name"] == "leaky")
        assert (leaky_clients(host, unit), user["current_client_connections"]) == (LEAKY_CLIENT_LIMIT, "5"), user
    finally:
        host.run("kill -- -%s", leader)
        for _attempt in range(50):
            if leaky_clients(host, unit) == 0:
                break
            time.sleep(0.1)


def test_on_debian_12_leaky_load_stays_within_its_share_of_server_connections_while_bench_runs(host):
    """What PgBouncer 1.18 holds leaky to: 40 leaky clients keep a server connection each busy (pg_sleep
    50 ms, on one process) while pgbench runs as bench. Nothing limits their clients there, but PostgreSQL
    never sees more leaky backends than its share (pool + reserve), and bench runs without an error.

    On 1.24+ leaky may have 5 clients, so it cannot press on its pool (the test above).
    """
    if pgbouncer_version(host) >= (1, 24):
        pytest.skip("1.24+ holds leaky to 5 clients (test_a_leaking_application_gets_its_client_share...)")
    unit = units(host)[0]
    socket_dir = live_config(host, unit)["unix_socket_dir"]
    binary = pgbench_binary(host)
    clients = 40
    leaky = (
        "echo 'SELECT pg_sleep(0.05);' > /tmp/leaky.sql; rm -f /tmp/leaky.rc /tmp/leaky-samples; touch /tmp/leaky-sampling; "
        "( while [ -e /tmp/leaky-sampling ]; do runuser -u postgres -- psql -XAtq -c "
        "\"SELECT count(*) FROM pg_stat_activity WHERE usename = 'leaky' AND backend_type = 'client backend'\" "
        ">> /tmp/leaky-samples; sleep 0.1; done ) & "
        f"env PGPASSWORD={PASSWORD} timeout 60 {binary} --host={socket_dir} --port={PGBOUNCER_PORT} --username=leaky "
        f"--no-vacuum --file=/tmp/leaky.sql --client={clients} --jobs=2 --time=6 bench > /tmp/leaky.out 2>&1; "
        "rc=$?; rm -f /tmp/leaky-sampling; wait; echo $rc > /tmp/leaky.rc"
    )
    sample = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'leaky' AND backend_type = 'client backend'"
    host.check_output("rm -f /tmp/leaky.rc; nohup bash -c %s >/dev/null 2>&1 &", leaky)
    try:
        for _attempt in range(50):  # leaky is at work before bench starts
            if int(host.check_output("runuser -u postgres -- psql -XAtq -c %s", sample)) > 0:
                break
            time.sleep(0.1)
        result, _samples = pgbench(host, 100, PGBOUNCER_PORT, f"--transactions={TRANSACTIONS}")
        overlapped = not host.file("/tmp/leaky.rc").exists
        for _attempt in range(100):
            if host.file("/tmp/leaky.rc").exists:
                break
            time.sleep(0.2)
        leaky_out = host.file("/tmp/leaky.out").content_string
        samples = [int(line) for line in host.file("/tmp/leaky-samples").content_string.split()]
    finally:
        # leaky's idle server connections would count in later tests' samples.
        host.run("runuser -u postgres -- psql -XAtq -c %s",
                 "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'leaky'")
    print(result.stdout)
    print(leaky_out)
    print(f"leaky backends over {len(samples)} samples: max {max(samples)} (share {USER_SHARE}, clients {clients})")
    assert overlapped, "pgbench as bench ended after leaky's run: they did not run at the same time"
    assert host.file("/tmp/leaky.rc").content_string.strip() == "0", leaky_out
    assert result.rc == 0, result.stderr
    assert re.search(r"^number of failed transactions: 0 \(0\.000%\)$", result.stdout, re.M), result.stdout
    assert f"number of transactions actually processed: {100 * TRANSACTIONS}/{100 * TRANSACTIONS}" in result.stdout
    assert "error" not in result.stderr.lower(), result.stderr
    # 40 busy clients filled the pool (12) and never got past pool + reserve.
    assert POOL_SIZE <= max(samples) <= USER_SHARE, samples


def assert_warns_once_about_the_client_shares(result):
    """PgBouncer 1.18 would refuse the file with either client limit: they are left out, and a run says so once.

    Checked on a run the faults below make anyway (a converge costs the scenario half a minute).
    """
    output = " ".join(result.stdout.split())  # the callback folds a long message
    warning = (
        f"WARNING {FAULT_HOST}: PgBouncer 1.18.0 has no max_user_client_connections (1.24+): the client share of"
        " users leaky (pgbouncer_user_client_limits) is not enforced here; no max_db_client_connections (1.24+):"
        " the client share of databases bench (pgbouncer_database_client_limits) is not enforced here; the server"
        " side still is."
    )
    assert output.count(f"WARNING {FAULT_HOST}:") == 1 and warning in output, output[-3000:]


# capacity.yml where PgBouncer runs beside its server (the lab's db1): each host is in groups
# postgresql and pgbouncer, and the report holds both its slots and its pools.
CAPACITY_DIRECT, CAPACITY_POOLED = 3, 2  # idle sessions per host, straight to PostgreSQL and through PgBouncer


@pytest.fixture
def capacity_run(host, tmp_path):
    """Idle sessions on this host, then capacity.yml on it and localhost (the hosts' tests run side by
    side): (result, report dir, backends)."""
    for app, port, count in (("capacity-direct", cluster(host)["port"], CAPACITY_DIRECT),
                             ("capacity-pooled", PGBOUNCER_PORT, CAPACITY_POOLED)):
        for _session in range(count):  # psql ends by itself when its stdin (sleep) closes
            host.check_output(f"PGAPPNAME={app} PGPASSWORD={PASSWORD} nohup sh -c 'sleep 120 | psql -X -h 127.0.0.1 "
                              f"-p {port} -U bench -d bench' >/dev/null 2>&1 &")
    for _attempt in range(50):
        if client_backends(host, "capacity-direct") == CAPACITY_DIRECT and pooled_clients(host) == CAPACITY_POOLED:
            break
        time.sleep(0.2)
    before = client_backends(host)
    # The playbook's plays use become; the containers have no sudo and the connection is root already.
    result = ansible_playbook(PROJECT / "playbooks" / "capacity.yml", "--limit", f"{name(host)},localhost",
                              "-e", f"connection_budget_report_dir={tmp_path}", "-e", "ansible_become=false",
                              inventories=[SCENARIO / "inventory" / "beside-server"])
    assert client_backends(host) == before, "sessions changed during the run; counts are not comparable"
    return result, tmp_path, before


def client_backends(host, app=None):
    """Client sessions on the server (of application ``app``), the counting query's own left out."""
    where = f" AND application_name = '{app}'" if app else ""
    return int(host.check_output(
        "runuser -u postgres -- psql -XAtq -c %s",
        f"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid(){where}",
    ))


def pooled_clients(host):
    """Clients of the bench role's pool over every running PgBouncer process (SHOW CLIENTS)."""
    return sum(1 for unit in units(host) for row in console(host, "SHOW CLIENTS", unit)
               if (row["database"], row["user"]) == ("bench", "bench"))


def test_capacity_reports_the_server_and_the_pgbouncer_beside_it(host, capacity_run):
    result, report_dir, backends = capacity_run
    assert result.returncode == 0, result.stdout[-3000:]
    report = json.loads((report_dir / "capacity.json").read_text())
    server = report["servers"][name(host)]
    assert (server["max_connections"], server["reserved"]) == (100, 3)
    assert server["used"] == backends
    assert server["free"] == 100 - 3 - backends
    assert server["by_application"]["capacity-direct"] == CAPACITY_DIRECT
    bench = [pool for pool in report["poolers"][name(host)]["pools"] if pool["database"] == "bench"]
    assert {pool["unit"] for pool in bench} <= set(units(host))  # a process makes a pool on first use
    assert sum(pool["clients_active"] for pool in bench if pool["user"] == "bench") == CAPACITY_POOLED
    assert sum(pool["clients_waiting"] for pool in bench) == 0
    assert f"| {name(host)} | no | 100 | 3 | {backends} |" in (report_dir / "capacity.md").read_text()


# Several processes (Debian 13): own unit, socket directory, pidfile and log each,
# sharing the port with so_reuseport, and [peers] so a cancel request reaches the
# process that runs the query whichever process the kernel hands it to.
def test_the_single_process_unit_is_stopped_and_disabled(multi_host):
    unit = multi_host.service("pgbouncer.service")
    assert not unit.is_running and not unit.is_enabled


def test_each_process_has_its_own_paths_and_serves_on_its_socket(multi_host):
    for number, unit in enumerate(units(multi_host), start=1):
        live = live_config(multi_host, unit)
        assert live["so_reuseport"] == "1"
        assert live["unix_socket_dir"] == f"/run/pgbouncer-{number}"
        assert live["pidfile"] == f"/run/pgbouncer-{number}/pgbouncer.pid"
        assert live["logfile"] == f"/var/log/postgresql/pgbouncer-{number}.log"
        assert live["peer_id"] == str(number)
        assert multi_host.file(live["pidfile"]).content_string.strip() == str(main_pid(multi_host, unit))
        result = login(multi_host, target=f"-h /run/pgbouncer-{number} -p {PGBOUNCER_PORT}")
        assert (result.rc, result.stdout.strip()) == (0, "1"), result.stderr


def test_every_process_takes_tcp_clients(multi_host):
    def transactions():
        counts = {}
        for unit in units(multi_host):
            rows = console(multi_host, "SHOW STATS", unit)
            counts[unit] = sum(int(row["total_xact_count"]) for row in rows if row["database"] == "bench")
        return counts

    before = transactions()
    result, _samples = pgbench(multi_host, 60, PGBOUNCER_PORT, "--transactions=20")
    assert result.rc == 0, result.stderr
    after = transactions()
    print(f"transactions per process: before {before}, after {after}")
    assert all(after[unit] > before[unit] for unit in before), (before, after)


def test_every_process_knows_its_peers(multi_host):
    for unit in units(multi_host):
        peers = console(multi_host, "SHOW PEERS", unit)
        assert sorted(row["peer_id"] for row in peers) == [str(n) for n in range(1, PROCESSES[name(multi_host)] + 1)]


def test_cancel_requests_reach_the_query_whichever_process_gets_them(multi_host):
    """psql sends its cancel on a new TCP connection: the kernel picks a process for it at random.

    Without peers about half the cancels go to the wrong process and are lost, so the query
    runs its 20 s. Eight tries all cancelled within seconds prove the forwarding.
    """
    for attempt in range(8):
        result = multi_host.run(
            "start=$(date +%%s); PGPASSWORD=%s timeout -s INT 2 psql -XAtq -h 127.0.0.1 -p %s -U bench -d bench "
            "-c 'SELECT pg_sleep(20)'; echo elapsed=$(( $(date +%%s) - start ))",
            PASSWORD, str(PGBOUNCER_PORT),
        )
        elapsed = int(re.search(r"elapsed=(\d+)", result.stdout).group(1))
        assert "canceling statement due to user request" in result.stderr, (attempt, result.stderr)
        assert elapsed < 10, (attempt, elapsed)


# Changing the number of processes (Debian 13 only, to keep the scenario short; resize.yml
# lets the 2-core machines run 3): each run
# leaves exactly the new processes running and enabled, one listener each on the port, their
# peers, and no unit, ini file or runtime directory of a dropped one.
RESIZE_HOST = "headroom-pgbouncer-debian13"


def numbered_leftovers(host):
    """Files of numbered processes: ini files (and last good copies), runtime dirs, units and their links."""
    out = host.check_output(
        "ls -d /etc/pgbouncer/pgbouncer-*.ini* /run/pgbouncer-* /etc/systemd/system/pgbouncer@* "
        "/etc/systemd/system/*.wants/pgbouncer@* 2>/dev/null || true"
    )
    return sorted(out.split())


def listeners(host):
    """Processes listening on PgBouncer's TCP port: one socket each with so_reuseport (/proc/net/tcp)."""
    port = f"{PGBOUNCER_PORT:04X}"
    return [line for line in host.file("/proc/net/tcp").content_string.splitlines()[1:]
            if line.split()[3] == "0A" and line.split()[1].endswith(f":{port}")]


def assert_runs_exactly(host, processes):
    numbers = range(1, processes + 1)
    want = ["pgbouncer.service"] if processes == 1 else [f"pgbouncer@{n}.service" for n in numbers]
    assert units(host) == want
    loaded = host.check_output("systemctl list-units --all --plain --no-legend 'pgbouncer@*.service'")
    assert sorted(line.split()[0] for line in loaded.splitlines() if line.strip()) == (want if processes > 1 else [])
    for unit in want:
        assert host.service(unit).is_enabled, unit
    assert host.service("pgbouncer.service").is_enabled == (processes == 1)
    assert len(listeners(host)) == processes, listeners(host)
    files = [] if processes == 1 else sorted(
        [f"/etc/pgbouncer/pgbouncer-{n}.ini" for n in numbers]
        + [f"/etc/pgbouncer/pgbouncer-{n}.ini.last-good" for n in numbers]
        + [f"/run/pgbouncer-{n}" for n in numbers]
        + ["/etc/systemd/system/pgbouncer@.service", "/etc/systemd/system/pgbouncer@.service.d"]
        + [f"/etc/systemd/system/multi-user.target.wants/pgbouncer@{n}.service" for n in numbers]
    )
    assert numbered_leftovers(host) == files
    for unit in want:
        live = live_config(host, unit)
        assert live["so_reuseport"] == ("1" if processes > 1 else "0"), unit
        assert live["max_client_conn"] == str(MAX_CLIENT_CONN), unit
        if processes > 1:
            assert sorted(row["peer_id"] for row in console(host, "SHOW PEERS", unit)) == [str(n) for n in numbers]
    result = login(host)
    assert (result.rc, result.stdout.strip()) == (0, "1"), result.stderr


def test_dropping_processes_without_pgbouncer_allow_restart_is_refused(host):
    if name(host) != RESIZE_HOST:
        pytest.skip(f"the resize runs on {RESIZE_HOST}")
    before = {unit: main_pid(host, unit) for unit in units(host)}, numbered_leftovers(host)
    result = playbook(host, "-e", "pgbouncer_processes=1")
    assert result.returncode != 0
    assert ("1 PgBouncer process(es) (pgbouncer_processes 1 or the sizing engine) replace pgbouncer@1.service, "
            "pgbouncer@2.service: that stops pgbouncer@1.service, pgbouncer@2.service") in result.stdout, result.stdout
    assert ({unit: main_pid(host, unit) for unit in units(host)}, numbered_leftovers(host)) == before


def test_changing_the_number_of_processes_runs_exactly_the_new_ones(host):
    """Every kind of change once: 2 -> 3 (N -> M up), 3 -> 2 (N -> M down), 2 -> 1 (autobase#861: the
    numbered processes kept the port), and back 1 -> 2 (1 -> N)."""
    if name(host) != RESIZE_HOST:
        pytest.skip(f"the resize runs on {RESIZE_HOST}")
    try:
        for processes in (3, 2, 1):
            result = playbook(host, "-e", f"pgbouncer_processes={processes}", "-e", "pgbouncer_allow_restart=true",
                              path=SCENARIO / "resize.yml")
            assert result.returncode == 0, (processes, result.stdout[-3000:])
            assert_runs_exactly(host, processes)
    finally:
        restored = playbook(host, "-e", "pgbouncer_allow_restart=true")
        assert restored.returncode == 0, restored.stdout[-3000:]
    assert_runs_exactly(host, PROCESSES[name(host)])


# Faults. Each runs the role (converge.yml) again on the single-process platform and
# asserts on the live PgBouncer afterwards; each leaves it as converge left it.
def test_a_run_with_a_file_pgbouncer_refuses_never_reloads(fault_host):
    """A certificate path that does not exist: PgBouncer cannot load the candidate, so the live file stays."""
    ini = "/etc/pgbouncer/pgbouncer.ini"
    before = fault_host.file(ini).sha256sum, main_pid(fault_host, "pgbouncer.service")
    result = playbook(fault_host, "-e", json.dumps({
        "pgbouncer_client_tls_sslmode": "require",
        "pgbouncer_client_tls_cert_file": "/etc/pgbouncer/missing.crt",
        "pgbouncer_client_tls_key_file": "/etc/pgbouncer/missing.key",
    }))
    assert result.returncode != 0, result.stdout
    assert "pgbouncer-check-config" in result.stdout and "failed to validate" in result.stdout, result.stdout
    assert (fault_host.file(ini).sha256sum, main_pid(fault_host, "pgbouncer.service")) == before
    assert "client_tls_sslmode = require" not in fault_host.file(ini).content_string
    assert live_config(fault_host, "pgbouncer.service")["client_tls_sslmode"] != "require"


def test_a_live_file_broken_by_hand_falls_back_silently_and_a_run_repairs_it(fault_host):
    unit, ini = "pgbouncer.service", "/etc/pgbouncer/pgbouncer.ini"
    pid = main_pid(fault_host, unit)
    fault_host.check_output("sed -i 's/^max_client_conn = .*/max_client_conn = plenty/' %s && systemctl reload %s", ini, unit)
    # What the role guards against: RELOAD answered success and PgBouncer runs defaults.
    fallback = live_config(fault_host, unit)
    assert (fallback["max_client_conn"], fallback["default_pool_size"]) == ("100", "20"), fallback
    result = playbook(fault_host)
    assert result.returncode == 0, result.stdout
    assert_warns_once_about_the_client_shares(result)
    live = live_config(fault_host, unit)
    assert (live["max_client_conn"], live["default_pool_size"]) == (str(MAX_CLIENT_CONN), str(POOL_SIZE))
    assert main_pid(fault_host, unit) == pid


def test_a_reload_that_does_not_take_puts_the_last_good_file_back(fault_host):
    """The file is broken right before PgBouncer reads it (a one-shot ExecReload hook stands in for a hand edit).

    The hook runs as root ("+"): the unit's User=postgres may not write /etc/pgbouncer.
    """
    unit, ini = "pgbouncer.service", "/etc/pgbouncer/pgbouncer.ini"
    last_good = fault_host.file(ini + ".last-good")
    assert last_good.sha256sum == fault_host.file(ini).sha256sum
    pid = main_pid(fault_host, unit)
    hook = "/etc/systemd/system/pgbouncer.service.d/zz-test-break-on-reload.conf"
    fault_host.check_output(
        "printf '%%s\\n' '[Service]' 'ExecReload=' "
        "\"ExecReload=+/bin/sh -c 'if [ -e /run/break-next-reload ]; then rm -f /run/break-next-reload; "
        "sed -i s/^max_client_conn.*/max_client_conn=plenty/ %s; fi; exec /bin/kill -HUP \\$MAINPID'\" > %s "
        "&& systemctl daemon-reload && touch /run/break-next-reload",
        ini, hook,
    )
    try:
        result = playbook(fault_host, "-e", "pgbouncer_server_idle_timeout=601")
    finally:
        fault_host.check_output("rm -f %s /run/break-next-reload && systemctl daemon-reload", hook)
    assert result.returncode != 0, result.stdout
    assert "Put back and reloaded the last good /etc/pgbouncer/pgbouncer.ini" in result.stdout, result.stdout
    live = live_config(fault_host, unit)
    assert (live["max_client_conn"], live["default_pool_size"], live["server_idle_timeout"]) == (
        str(MAX_CLIENT_CONN), str(POOL_SIZE), "600")
    assert fault_host.file(ini).sha256sum == last_good.sha256sum
    assert main_pid(fault_host, unit) == pid


def test_a_run_stopped_between_the_write_and_its_reload_is_reloaded_by_the_next(fault_host, kill_at_task):
    """The controller dies after pgbouncer.ini is written and before its RELOAD: the file holds the new value and
    the process runs the old one. The next run reloads it, and keeps the file rather than putting the last good
    one back."""
    unit, ini = "pgbouncer.service", "/etc/pgbouncer/pgbouncer.ini"
    pid = main_pid(fault_host, unit)
    try:
        kill_at_task(playbook(fault_host, "-e", "pgbouncer_server_idle_timeout=602", popen=True),
                     "TASK [headroom.pg.pgbouncer : Apply them")
        assert "\nserver_idle_timeout = 602\n" in fault_host.file(ini).content_string
        assert live_config(fault_host, unit)["server_idle_timeout"] == "600"
        result = playbook(fault_host, "-e", "pgbouncer_server_idle_timeout=602")
        assert result.returncode == 0, result.stdout[-3000:]
        assert "Reloading pgbouncer.service: the files hold server_idle_timeout" in " ".join(result.stdout.split())
        assert live_config(fault_host, unit)["server_idle_timeout"] == "602"
        assert fault_host.file(ini + ".last-good").sha256sum == fault_host.file(ini).sha256sum
        assert main_pid(fault_host, unit) == pid
    finally:
        restored = playbook(fault_host)
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert live_config(fault_host, unit)["server_idle_timeout"] == "600"


def test_settings_debian_12s_pgbouncer_lacks_are_refused_before_any_file_changes(fault_host):
    """1.18: no prepared statements across transaction pooling (1.21), no transaction_timeout (1.25), no [peers] (1.19),
    and no [users] line beside auth_query (1.23)."""
    ini = "/etc/pgbouncer/pgbouncer.ini"
    before = fault_host.file(ini).sha256sum, main_pid(fault_host, "pgbouncer.service")
    result = playbook(fault_host, "-e", json.dumps({
        "pgbouncer_max_prepared_statements": 200, "pgbouncer_transaction_timeout": 30, "pgbouncer_processes": 2,
        "pgbouncer_user_settings": {"leaky": {"pool_size": 4}}}))
    output = " ".join(result.stdout.split())
    assert result.returncode != 0, output
    for refusal in (
        "pgbouncer_max_prepared_statements 200: PgBouncer 1.18.0 on headroom-pgbouncer-debian12 has no"
        " max_prepared_statements (it needs 1.21 or later); set pgbouncer_max_prepared_statements: 0 and turn off the"
        " drivers' protocol-level prepared statements",
        "pgbouncer_transaction_timeout 30: PgBouncer 1.18.0 on headroom-pgbouncer-debian12 has no transaction_timeout"
        " (it needs 1.25 or later)",
        "pgbouncer_processes 2: PgBouncer 1.18.0 has no [peers] (1.19+)",
        'pgbouncer_user_settings "leaky": PgBouncer 1.18.0 on headroom-pgbouncer-debian12 stops auth_query logins of a'
        " user with a [users] line (before 1.23)",
    ):
        assert refusal in output, output[-3000:]
    assert (fault_host.file(ini).sha256sum, main_pid(fault_host, "pgbouncer.service")) == before


def test_an_extra_setting_the_version_lacks_is_refused_by_the_candidate_check(fault_host):
    """max_user_client_connections as a global setting is 1.24's: PgBouncer 1.18 cannot load a file with it."""
    ini = "/etc/pgbouncer/pgbouncer.ini"
    before = fault_host.file(ini).sha256sum
    result = playbook(fault_host, "-e", json.dumps({"pgbouncer_extra_settings": {"max_user_client_connections": 50}}))
    assert result.returncode != 0, result.stdout
    assert "pgbouncer-check-config" in result.stdout and "unknown parameter" in result.stdout, result.stdout[-3000:]
    assert fault_host.file(ini).sha256sum == before
    assert "max_user_client_connections" not in live_config(fault_host, "pgbouncer.service")


CONSOLE_RELOAD_HOST = "headroom-pgbouncer-forky"  # PgBouncer 1.26


def test_transaction_timeout_with_auth_query_is_refused_where_pgbouncer_has_it(host):
    """1.26: the janitor times an auth_query lookup's transaction from 0, so the setting would fail logins under load.

    Seen in this scenario before the refusal: 1000 pgbench logins through PgBouncer with
    transaction_timeout 600 got "SASL authentication failed" and "bouncer config error", and the
    log said "bench/pgbouncer_auth@unix:5432 closing because: transaction timeout (age=5s)".
    """
    if name(host) != CONSOLE_RELOAD_HOST:
        pytest.skip(f"the PgBouncer 1.25+ refusal runs on {CONSOLE_RELOAD_HOST}")
    before = {ini_of(u): host.file(ini_of(u)).sha256sum for u in units(host)}
    result = playbook(host, "-e", "pgbouncer_transaction_timeout=600")
    output = " ".join(result.stdout.split())
    assert result.returncode != 0, output[-3000:]
    assert "pgbouncer_transaction_timeout 600 with pgbouncer_auth_mode auth_query:" in output, output[-3000:]
    assert {ini: host.file(ini).sha256sum for ini in before} == before
    assert all(live_config(host, u)["transaction_timeout"] == "0" for u in units(host))


def test_a_console_reload_that_reports_an_error_puts_the_last_good_files_back(host):
    """PgBouncer 1.25+ answers RELOAD with an error when the file did not load, and the role acts on it.

    The file passed the candidate check; a one-shot watcher breaks process 1's file right after
    the role wrote it, before the RELOAD (a hand edit at the wrong moment stands in for it).
    """
    if name(host) != CONSOLE_RELOAD_HOST:
        pytest.skip(f"the console RELOAD fault runs on {CONSOLE_RELOAD_HOST}")
    unit, ini = "pgbouncer@1.service", "/etc/pgbouncer/pgbouncer-1.ini"
    last_good = host.file(ini + ".last-good").sha256sum
    assert last_good == host.file(ini).sha256sum
    pids = {u: main_pid(host, u) for u in units(host)}
    host.check_output(
        "nohup sh -c 'before=$(sha256sum < %s); i=0; while [ \"$(sha256sum < %s)\" = \"$before\" ] && [ $i -lt 1800 ]; "
        "do sleep 0.05; i=$((i+1)); done; sed -i s/^pool_mode.*/pool_mode=bogus/ %s' >/dev/null 2>&1 &",
        ini, ini, ini)
    try:
        result = playbook(host, "-e", "pgbouncer_server_idle_timeout=601")
    finally:
        host.run("pkill -f 'sha256sum < %s' || true", ini)
    output = " ".join(result.stdout.split())
    assert result.returncode != 0, output[-3000:]
    assert "RELOAD failed, see logs for additional details" in output, output[-3000:]
    assert "Put back and reloaded the last good /etc/pgbouncer/pgbouncer-1.ini" in output, output[-3000:]
    assert host.file(ini).sha256sum == last_good
    for u in units(host):
        live = live_config(host, u)
        assert (live["pool_mode"], live["server_idle_timeout"]) == ("transaction", "600"), (u, live)
    # Process 2 had taken 601 from its good file; the role put its last good file back too.
    assert {u: main_pid(host, u) for u in units(host)} == pids


def test_a_file_descriptor_limit_below_the_sizing_is_refused(fault_host):
    dropin = "/etc/systemd/system/pgbouncer.service.d/headroom-limits.conf"
    before = fault_host.file(dropin).sha256sum
    result = playbook(fault_host, "-e", "pgbouncer_nofile_limit=512")
    assert result.returncode != 0
    assert re.search(r"pgbouncer_nofile_limit 512 is below the \d+ file descriptors", result.stdout), result.stdout
    assert fault_host.file(dropin).sha256sum == before


def test_a_file_descriptor_limit_lowered_outside_the_role_fails_the_run(fault_host):
    unit = "pgbouncer.service"
    low = "/etc/systemd/system/pgbouncer.service.d/zz-test-low-nofile.conf"
    fault_host.check_output("printf '[Service]\\nLimitNOFILE=512\\n' > %s && systemctl daemon-reload && systemctl restart %s",
                            low, unit)
    try:
        result = playbook(fault_host)
    finally:
        fault_host.check_output("rm -f %s && systemctl daemon-reload && systemctl restart %s", low, unit)
    assert result.returncode != 0
    assert re.search(r"pgbouncer.service started with a file descriptor limit of 512 but expects up to \d+",
                     result.stdout), result.stdout
    limits = fault_host.file(f"/proc/{main_pid(fault_host, unit)}/limits").content_string
    assert int(re.search(r"^Max open files\s+(\d+)", limits, re.M).group(1)) > MAX_CLIENT_CONN


def test_listening_beyond_loopback_without_client_tls_is_refused(fault_host):
    ini = "/etc/pgbouncer/pgbouncer.ini"
    before = fault_host.file(ini).sha256sum
    result = playbook(fault_host, "-e", "pgbouncer_listen_addr=0.0.0.0")
    assert result.returncode != 0
    assert ('pgbouncer_listen_addr "0.0.0.0" listens beyond loopback on 0.0.0.0, so pgbouncer_client_tls_sslmode '
            "must be require, verify-ca or verify-full") in result.stdout, result.stdout
    assert fault_host.file(ini).sha256sum == before
    assert live_config(fault_host, "pgbouncer.service")["listen_addr"] == "127.0.0.1"


def test_an_entry_for_the_postgres_database_keeps_the_superusers_peer_login(fault_host):
    # Any user (a count) on the database postgres: the role's scram-sha-256 rule goes first in
    # pg_hba.conf, and without its own peer line the superuser would be asked for a password.
    databases = [{"name": "bench", "users": ["bench", "leaky"]}, {"name": "postgres", "users": 2}]
    result = playbook(fault_host, "-e", json.dumps({"pgbouncer_databases": databases}))
    try:
        assert result.returncode == 0, result.stdout[-3000:]
        peer = fault_host.run("runuser -u postgres -- psql -XAtq --dbname=postgres --command='SELECT 1'")
        assert (peer.rc, peer.stdout.strip()) == (0, "1"), peer.stderr
        other = fault_host.run(
            "env PGPASSWORD=wrong psql -XAtq --host=/var/run/postgresql --username=bench --dbname=postgres --command='SELECT 1'"
        )
        assert other.rc != 0 and 'password authentication failed for user "bench"' in other.stderr, other.stderr
    finally:
        restored = playbook(fault_host)  # back to the scenario's own databases
        assert restored.returncode == 0, restored.stdout[-3000:]


def test_no_secret_reaches_any_log(fault_host):
    """A canary role's password and SCRAM verifier go through the userlist (as a stats user) in a
    converge, a check-mode --diff run that would take it out again, and a run that fails after
    reading it, all at -vvv: neither the password nor any part of the verifier is in their
    output, the journal or the PostgreSQL and PgBouncer logs.
    """
    canary = "canary-" + secrets.token_hex(12)
    fault_host.check_output(
        "runuser -u postgres -- psql -XAtq --set=ON_ERROR_STOP=1 -c %s -c %s",
        "SET password_encryption = 'scram-sha-256'",
        f"DROP ROLE IF EXISTS canary; CREATE ROLE canary LOGIN PASSWORD '{canary}'",
    )
    verifier = fault_host.check_output("runuser -u postgres -- psql -XAt -c \"SELECT rolpassword FROM pg_authid WHERE rolname = 'canary'\"")
    stored_key, server_key = re.fullmatch(r"SCRAM-SHA-256\$\d+:[^$]+\$([^:]+):(.+)", verifier).groups()
    with_canary = json.dumps({"pgbouncer_stats_users": ["monitor", "canary"]})
    runs = {
        "converge": playbook(fault_host, "-vvv", "-e", with_canary),
        "check --diff": playbook(fault_host, "-vvv", "--check", "--diff"),
        "failing": playbook(fault_host, "-vvv", "-e", json.dumps({"pgbouncer_stats_users": ["monitor", "canary", "ghost"]})),
    }
    assert runs["converge"].returncode == 0, runs["converge"].stdout
    assert "canary" in fault_host.file("/etc/pgbouncer/userlist.txt").content_string
    assert runs["check --diff"].returncode == 0, runs["check --diff"].stdout
    assert re.search(r"changed=[1-9]", runs["check --diff"].stdout), runs["check --diff"].stdout
    assert runs["failing"].returncode != 0 and "ghost" in runs["failing"].stdout
    logs = {run: result.stdout for run, result in runs.items()}
    logs["journal"] = fault_host.check_output("journalctl --no-pager -o cat")
    logs["server and pooler logs"] = fault_host.check_output("cat /var/log/postgresql/*.log")
    for where, text in logs.items():
        for secret in (canary, verifier, stored_key, server_key):
            assert secret not in text, f"a secret of the canary role is in the {where} output"


# Zero-downtime restart (PgBouncer 1.23+, several processes on so_reuseport). Last on its
# hosts: it leaves them as converge left them, running the same program from a new inode.
def test_a_package_upgrade_restarts_the_processes_one_at_a_time_without_a_failed_transaction(multi_host):
    """dpkg renames the new program over the old one; a rename stands in for the upgrade here.

    During the run, clients that connect for every transaction (pgbench --connect, again and
    again) and 8 sessions that stay connected (a query every 0.1 s, until 3 s into the first
    drain) go through PgBouncer, and a sampler counts the listeners on the port every 0.1 s.
    One idle session outstays pgbouncer_drain_timeout (group_vars: 20 s), so one process is
    stopped by systemd.
    """
    host = multi_host
    target = f"env PGPASSWORD={PASSWORD} PGCONNECT_TIMEOUT=10 {pgbench_binary(host)} -h 127.0.0.1 -p {PGBOUNCER_PORT} -U bench"
    pids = {u: main_pid(host, u) for u in units(host)}
    # The test's root may not read the processes' /proc/PID/exe (no CAP_SYS_PTRACE): the run's message proves
    # that pgbouncer_info saw the new program.
    host.check_output("cp -p /usr/sbin/pgbouncer /usr/sbin/pgbouncer.new && mv /usr/sbin/pgbouncer.new /usr/sbin/pgbouncer")
    started = host.check_output("date +%s")
    host.check_output("bash -c %s", f"""
        rm -rf /tmp/rolling; mkdir /tmp/rolling; touch /tmp/rolling/running; cd /tmp/rolling
        # the listeners on the port, every 0.1 s (/proc/net/tcp: local port in hex, state 0A is LISTEN)
        nohup sh -c 'while [ -e running ]; do grep -c ":{PGBOUNCER_PORT:04X} 0*:0000 0A" /proc/net/tcp >> listeners; \
          sleep 0.1; done' >/dev/null 2>&1 &
        # a new connection for every transaction, in 3 s runs until the role is done
        nohup sh -c 'i=0; while [ -e running ]; do i=$((i+1)); {target} --connect --no-vacuum --select-only \
          --client=4 --jobs=2 --time=3 bench > connect-$i.out 2>&1; echo $? > connect-$i.rc; done' >/dev/null 2>&1 &
        # 8 sessions that stay connected, a query every 0.1 s, until 3 s into the first process's drain
        for i in 1 2 3 4 5 6 7 8; do
          nohup env i=$i sh -c '(while [ ! -e stop ]; do echo "SELECT 1;"; sleep 0.1; done) | env PGPASSWORD={PASSWORD} \
            psql -XAtq -v ON_ERROR_STOP=1 -h 127.0.0.1 -p {PGBOUNCER_PORT} -U bench bench > session-$i.out 2>&1; \
            echo $? > session-$i.rc' >/dev/null 2>&1 &
        done
        nohup sh -c 'tail -n0 -F /var/log/postgresql/pgbouncer-1.log /var/log/postgresql/pgbouncer-2.log 2>/dev/null \
          | grep -m1 "got SIGTERM" >/dev/null; sleep 3; echo drain > stop' >/dev/null 2>&1 &
        # idle, for longer than pgbouncer_drain_timeout
        nohup sh -c '(echo "SELECT 1;"; sleep 300) | env PGPASSWORD={PASSWORD} psql -XAtq -h 127.0.0.1 \
          -p {PGBOUNCER_PORT} -U bench bench' >/dev/null 2>&1 &
        """)
    try:
        time.sleep(1)
        result = playbook(host, "-e", "pgbouncer_allow_restart=true")
    finally:
        host.run("cd /tmp/rolling; rm -f running; [ -e stop ] || echo finally > stop; pkill -f 'sleep [3]00' || true;"
                 " pkill -f 'tail -n0 -[F]' || true")  # [3], [F]: not this shell itself
        host.run("timeout 60 sh -c 'while pgrep -x pgbench >/dev/null || pgrep -x psql >/dev/null; do sleep 0.2; done'")
    output = " ".join(result.stdout.split())
    assert result.returncode == 0, output[-3000:]
    assert "Restarting pgbouncer@1.service, pgbouncer@2.service for program: one at a time" in output, output[-3000:]

    # Every process runs the new program, and was restarted through SIGTERM's drain.
    after = {u: main_pid(host, u) for u in units(host)}
    assert set(after) == set(pids) and all(after[u] != pids[u] for u in pids), (pids, after)
    for number in (1, 2):
        log = host.file(f"/var/log/postgresql/pgbouncer-{number}.log").content_string
        pid = pids[f"pgbouncer@{number}.service"]
        assert any(f"[{pid}]" in line and "got SIGTERM, shutting down, waiting for all clients disconnect" in line
                   for line in log.splitlines()), f"process {pid} (pgbouncer-{number}.log) logged no SIGTERM drain"

    # The port always had a listener, and for a while only one: the processes drained in turn.
    listeners = [int(n) for n in host.file("/tmp/rolling/listeners").content_string.split()]
    print(f"listeners on the port: min {min(listeners)}, max {max(listeners)}, samples {len(listeners)}")
    assert min(listeners) >= 1 and 1 in listeners and 2 in listeners, listeners

    # No transaction failed, in any --connect run. The one error a new connection may see: PgBouncer refuses
    # a login still in progress at the instant of SIGTERM (finish_client_login: "pooler is shutting down"),
    # at most the 4 clients of the run per process stopped. Seen: 0 to 2 per run, on 1.24 and 1.26.
    runs = sorted(host.file("/tmp/rolling").listdir())
    connects = [r[:-3] for r in runs if r.startswith("connect-") and r.endswith(".rc")]
    assert len(connects) >= 3, runs
    refused = 0
    for run in connects:
        report = host.file(f"/tmp/rolling/{run}.out").content_string
        rc = host.file(f"/tmp/rolling/{run}.rc").content_string.strip()
        errors = [line for line in report.splitlines() if "error" in line.lower()]
        if "number of failed transactions" not in report:
            # The refusal hit pgbench's setup connection: the run started no transaction at all.
            assert rc != "0" and any("pooler is shutting down" in line for line in errors) and all(
                "pooler is shutting down" in line or "could not create connection for setup" in line
                for line in errors), (run, rc, report[-1500:])
            refused += 1
            continue
        assert "number of failed transactions: 0 " in report, (run, rc, report[-1500:])
        if rc != "0":
            assert errors and all(
                "pooler is shutting down" in line or "aborted while establishing connection" in line
                or "Run was aborted" in line for line in errors), (run, rc, report[-1500:])
        refused += sum("pooler is shutting down" in line for line in errors)
    print(f"{len(connects)} --connect runs; logins refused at a SIGTERM: {refused}")
    assert refused <= 4 * len(pids), refused
    # The connected sessions went on through the first drain and ended cleanly 3 s into it.
    assert host.file("/tmp/rolling/stop").content_string.strip() == "drain"
    for i in range(1, 9):
        out = host.file(f"/tmp/rolling/session-{i}.out").content_string
        assert host.file(f"/tmp/rolling/session-{i}.rc").content_string.strip() == "0", (i, out[-500:])
        assert out.split() and set(out.split()) == {"1"}, (i, out[-500:])

    # The idle session outstayed the drain: systemd stopped its process when the 20 s were up.
    journal = host.check_output("journalctl --no-pager -o cat --since @%s -u pgbouncer@1.service -u pgbouncer@2.service",
                                started)
    assert "State 'stop-sigterm' timed out. Killing." in journal, journal[-2000:]


# The server outside the inventory (prepare.yml, molecule/shared/external-server.yml): PostgreSQL 17,
# max_connections 40, orders_app's password set as the verifier orders_verifier (molecule.yml).
EXTERNAL = "headroom-pgbouncer-ext"


def test_a_server_outside_the_inventory_is_reached_over_verified_tls_with_the_given_verifier(multi_host):
    """The last test of 1.24 and 1.26 (the entry stays): in auth_query mode, the entry's user is found in
    the userlist first, so no lookup runs on that server, and PgBouncer logs in with SCRAM pass-through."""
    host = multi_host
    extra = {
        "headroom_external_servers": {"orders-ext": {"address": EXTERNAL, "max_connections": 40, "cpus": 2}},
        "pgbouncer_databases": [{"name": "bench", "users": ["bench", "leaky"]},
                                {"name": "orders", "host": "orders-ext", "users": ["orders_app"]}],
        "pgbouncer_user_verifiers": {"orders_app": "{{ orders_verifier }}"},
        "pgbouncer_server_tls_sslmode": "verify-full",
        "pgbouncer_server_tls_ca_file": "/etc/ssl/certs/headroom-test-ca.pem",
        "pgbouncer_server_connection_allowance": 0,  # the scenario's 84 has no room for the new entry's pools
    }
    result = playbook(host, "-e", json.dumps(extra))
    assert result.returncode == 0, result.stdout[-3000:]
    ssl = "'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'"
    for unit in units(host):
        config = live_config(host, unit)
        assert (config["server_tls_sslmode"], config["auth_type"]) == ("verify-full", "scram-sha-256"), unit
        orders = next(row for row in console(host, "SHOW DATABASES", unit) if row["name"] == "orders")
        assert (orders["host"], orders["port"]) == (EXTERNAL, "5432"), orders
        # The session on the external server says TLS; each process is reached on its own socket.
        out = host.check_output(f"PGPASSWORD={PASSWORD} PGCONNECT_TIMEOUT=10 psql -XAtq -h {config['unix_socket_dir']} "
                                f"-p {PGBOUNCER_PORT} -U orders_app -d orders -c {ssl}")
        assert out == "t", unit
    # bench's own server, on the socket, is unchanged.
    assert host.check_output(f"PGPASSWORD={PASSWORD} psql -XAtq -h 127.0.0.1 -p {PGBOUNCER_PORT} -U bench -d bench "
                             "-c 'SELECT 1'") == "1"
    # The userlist holds the verifier, not the password.
    userlist = host.file("/etc/pgbouncer/userlist.txt").content_string
    assert '"orders_app" "SCRAM-SHA-256$4096:' in userlist and PASSWORD not in userlist
