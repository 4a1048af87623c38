"""A real PostgreSQL for the client examples: container headroom-apps-db, reached from this machine.

The container (Debian 12, PostgreSQL 15 baked in, systemd) listens on its address on Docker's
bridge with a SCRAM role for the test and a small max_connections, so that the idle sessions the
test opens first leave only a few slots to the examples. It is removed at the end, also when a
test fails.
"""

import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

NAME = "headroom-apps-db"
IMAGE = "headroom/debian:12-baked"
VERSION = 15
ROLE, PASSWORD = "app", "headroom-apps-test-only"
#: 40 slots, 3 of them for superusers (superuser_reserved_connections): 37 for the role.
MAX_CONNECTIONS = 40
SLOTS = MAX_CONNECTIONS - 3


def run(argv, check=True, timeout=120):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def sh(script, check=True):
    return run(["docker", "exec", NAME, "bash", "-c", script], check=check)


def psql(sql):
    """One statement as the superuser over the container's socket (a reserved slot), its output."""
    return sh(f"runuser -u postgres -- psql -XAtq -v ON_ERROR_STOP=1 -c \"{sql}\"").stdout.strip()


def wait_until_it_answers():
    for _attempt in range(120):
        if sh("runuser -u postgres -- psql -XAtqc 'SELECT 1' 2>/dev/null", check=False).stdout.strip() == "1":
            return
        time.sleep(0.25)
    raise RuntimeError(f"PostgreSQL in {NAME} did not answer")


class Server:
    """The running container: its DSN for the test role, and sessions that fill its slots."""

    def __init__(self, host):
        self.host = host
        self.dsn = f"host={host} port=5432 dbname=postgres user={ROLE} password={PASSWORD} connect_timeout=5"
        self.fillers = []

    def fill(self, leave):
        """Open idle sessions as the test role until only ``leave`` slots are free for it."""
        self.release()
        for _slot in range(SLOTS - leave):
            self.fillers.append(psycopg.connect(self.dsn, autocommit=True))

    def free_gradually(self, count, when, interval=0.1):
        """From a thread, once ``when()`` is true (or after 10 s), close ``count`` of the idle
        sessions, one every ``interval`` seconds: other clients leaving. The thread is returned; join it."""
        leaving = [self.fillers.pop() for _slot in range(count)]

        def leave():
            deadline = time.monotonic() + 10
            while not when() and time.monotonic() < deadline:
                time.sleep(0.01)
            for conn in leaving:
                time.sleep(interval)
                conn.close()
        thread = threading.Thread(target=leave)
        thread.start()
        return thread

    def release(self):
        for conn in self.fillers:
            conn.close()
        self.fillers = []
        # The backends of closed sessions take a moment to exit and free their slots.
        for _attempt in range(100):
            if int(psql(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{ROLE}'")) == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"sessions of {ROLE} are still open")

    def sessions(self):
        return int(psql(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{ROLE}'"))


@pytest.fixture(scope="session")
def server():
    run(["docker", "rm", "-f", NAME], check=False)
    try:
        run(["docker", "run", "-d", "--name", NAME, "--hostname", NAME, "--cap-add", "SYS_ADMIN", "--cgroupns", "host",
             "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
             IMAGE, "/lib/systemd/systemd"])
        wait_until_it_answers()
        conf = f"/etc/postgresql/{VERSION}/main"
        sh(f"printf \"listen_addresses = '*'\\nmax_connections = {MAX_CONNECTIONS}\\n\" > {conf}/conf.d/50-apps-test.conf && "
           f"echo 'host all {ROLE} samenet scram-sha-256' >> {conf}/pg_hba.conf && "
           f"systemctl restart postgresql@{VERSION}-main")
        wait_until_it_answers()
        psql(f"SET password_encryption = 'scram-sha-256'; CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        assert psql("SHOW max_connections") == str(MAX_CONNECTIONS)
        host = run(["docker", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", NAME]).stdout.strip()
        srv = Server(host)
        yield srv
        srv.release()
    finally:
        run(["docker", "rm", "-f", NAME], check=False)


@pytest.fixture
def budget(monkeypatch, server):
    """The environment headroom gives an application: its DSN and its pool size, and a short retry budget."""
    def give(pool_size, **extra):
        monkeypatch.setenv("HEADROOM_DSN", server.dsn)
        monkeypatch.setenv("HEADROOM_POOL_SIZE", str(pool_size))
        for name, value in extra.items():
            monkeypatch.setenv(name, str(value))
    return give
