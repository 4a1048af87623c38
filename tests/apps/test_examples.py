"""The client examples against a real PostgreSQL whose slots are nearly full.

Each example gets a budget of 8 connections where only 4 slots are free, and 300 concurrent
workers that each run a unit of work. Its pool's first connections beyond those 4 are refused
with 53300 and must be retried; other clients then leave, one every 0.1 s, and the retries get
their slots. No error may reach a worker; without the retry the same run gives them 53300. A
leaking variant, on a server that stays full, fails the way a leak does while the well-behaved
service beside it goes on. A server in a smart shutdown refuses with its real 57P03 message,
which the retry knows.
"""

import concurrent.futures
import os
import subprocess
import sys
import time

import psycopg
import psycopg2
import psycopg2.pool
import pytest
import retry
import service_psycopg2
import service_psycopg3
from conftest import EXAMPLES, VERSION, sh, wait_until_it_answers

WORKERS = 300
POOL_SIZE = 8
FREE_SLOTS = 4
#: Short retries for the test: at most 0.05 + 0.1 + 0.2 + 0.4 + 0.5 s of waiting per connect.
FAST_RETRY = {"HEADROOM_RETRY_ATTEMPTS": 6, "HEADROOM_RETRY_CAP": 0.5}


def concurrently(handle, workers=WORKERS):
    """Every worker handles one request at the same time; their results and the errors that reached them."""
    results, errors = {}, []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(handle, request): request for request in range(workers)}
        for future in concurrent.futures.as_completed(futures):
            try:
                results[futures[future]] = future.result()
            except Exception as exc:  # pylint: disable=broad-exception-caught  # counted and reported below
                errors.append(exc)
    return results, errors


@pytest.mark.parametrize("example", [service_psycopg2, service_psycopg3], ids=["psycopg2", "psycopg3"])
def test_no_error_reaches_the_caller_on_a_nearly_full_server(server, budget, example):
    server.fill(leave=FREE_SLOTS)
    budget(POOL_SIZE)  # the examples' default retries: 10 attempts, 2 s cap
    service = example.Service()
    # Other clients leave once the pool has been refused: the refusal is certain, not a race.
    leaving = server.free_gradually(POOL_SIZE - FREE_SLOTS + 2, when=lambda: service.retry.retries)
    try:
        started = time.monotonic()
        results, errors = concurrently(service.handle)
        elapsed = time.monotonic() - started
        leaving.join()
        held = server.sessions() - len(server.fillers)
    finally:
        service.close()
    print(f"{example.__name__}: {len(results)} requests in {elapsed:.2f} s, {len(errors)} errors, "
          f"retries {dict(service.retry.retries)}, {held} connections held")
    assert errors == []
    assert results == {request: request for request in range(WORKERS)}
    # The pool met a full server and retried: without retries the test proves nothing.
    assert service.retry.retries["53300"] > 0
    # It holds no more than its budget (counted on the server after the run).
    assert 0 < held <= POOL_SIZE


@pytest.mark.parametrize("script", ["service_psycopg2.py", "service_psycopg3.py"])
def test_the_examples_run_as_shipped(server, script):
    """``python examples/<script>`` with only the environment an application gets."""
    server.release()
    env = {**os.environ, "HEADROOM_DSN": server.dsn, "HEADROOM_POOL_SIZE": str(POOL_SIZE), "HEADROOM_WORKERS": str(WORKERS)}
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{WORKERS} requests, retries ")
    missing = subprocess.run([sys.executable, str(EXAMPLES / script)], env={**env, "HEADROOM_POOL_SIZE": ""},
                             capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode != 0
    assert "HEADROOM_POOL_SIZE must be a positive integer" in missing.stderr


def test_without_the_retry_the_same_run_fails(server, budget):
    """The control: the psycopg2 example with a single attempt, on the same server, gives its callers 53300."""
    server.fill(leave=FREE_SLOTS)
    budget(POOL_SIZE, HEADROOM_RETRY_ATTEMPTS=1)
    service = service_psycopg2.Service()
    started = time.monotonic()
    leaving = server.free_gradually(POOL_SIZE - FREE_SLOTS + 2, when=lambda: time.monotonic() > started + 0.3)
    try:
        results, errors = concurrently(service.handle)
        leaving.join()
    finally:
        service.close()
    assert errors
    assert {retry.transient(exc) for exc in errors} == {"53300"}
    assert len(results) + len(errors) == WORKERS


class Leaky(service_psycopg2.Service):
    """The psycopg2 service with a leak: it takes a connection for each request and never gives it back."""

    def handle(self, request):
        return self.work(self.retry(self.pool.getconn), request)


def test_a_leak_fails_like_a_leak_while_the_well_behaved_service_goes_on(server, budget):
    server.fill(leave=8)
    budget(4, **FAST_RETRY)
    good = service_psycopg3.Service()
    good.pool.wait(timeout=10)  # its 4 connections are open: 4 slots left
    budget(3, **FAST_RETRY)
    leaky = Leaky()
    try:
        # Within its budget the leak exhausts its own pool: the 4th request fails at once, not retried.
        assert [leaky.handle(request) for request in range(3)] == [0, 1, 2]
        with pytest.raises(psycopg2.pool.PoolError, match="connection pool exhausted"):
            leaky.handle(3)
        assert not leaky.retry.retries

        # With a budget larger than the server has, it leaks until the server refuses: 53300
        # reaches its caller once the retries are spent.
        budget(100, **FAST_RETRY)
        greedy = Leaky()
        try:
            assert greedy.handle(0) == 0
            with pytest.raises(psycopg2.OperationalError) as refused:
                greedy.handle(1)
            assert retry.transient(refused.value) == "53300"
            assert greedy.retry.retries["53300"] == greedy.retry.attempts - 1

            # The server is full now; the well-behaved service still serves every worker with the
            # connections it holds.
            results, errors = concurrently(good.handle)
            assert errors == []
            assert len(results) == WORKERS
        finally:
            greedy.close()
    finally:
        leaky.close()
        good.close()


@pytest.mark.parametrize("message, code", [
    ("FATAL:  sorry, too many clients already", "53300"),
    ("FATAL:  remaining connection slots are reserved for non-replication superuser connections", "53300"),
    ("FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute", "53300"),
    ('FATAL:  too many connections for role "app"', "53300"),
    ("FATAL:  the database system is starting up", "57P03"),
    ("FATAL:  the database system is shutting down", "57P03"),
    ("FATAL:  the database system is not yet accepting connections", "57P03"),
    # PgBouncer's, through it (src/client.c, src/objects.c).
    ("FATAL:  no more connections allowed (max_client_conn)", "53300"),
    ("FATAL:  client connections exceeded (max_user_client_connections)", "53300"),
    ("FATAL:  client connections exceeded (max_db_client_connections)", "53300"),
    ("FATAL:  pooler is shutting down", "57P03"),
    ('FATAL:  password authentication failed for user "app"', None),
    ('FATAL:  database "nope" does not exist', None),
    ('FATAL:  no such database: nope', None),
])
def test_what_is_retried(message, code):
    """PostgreSQL's refusals (from its source, 15 to 18) and PgBouncer's are known by their text, as libpq gives no
    SQLSTATE there."""
    assert retry.transient(psycopg2.OperationalError(f'connection to server at "db1", port 5432 failed: {message}')) == code


def test_a_server_shutting_down_is_refused_with_57P03_and_retried(server, budget):
    """A smart shutdown waits for the last session and refuses new ones: the retry knows the real message."""
    server.release()
    budget(1, HEADROOM_RETRY_ATTEMPTS=3, HEADROOM_RETRY_CAP=0.1)
    last = psycopg.connect(server.dsn)
    try:
        sh(f"kill -TERM $(head -1 /var/lib/postgresql/{VERSION}/main/postmaster.pid)")  # SIGTERM: smart shutdown
        attempts = retry.Retry()
        with pytest.raises(psycopg2.OperationalError, match="the database system is shutting down") as refused:
            attempts(psycopg2.connect, server.dsn)
        assert retry.transient(refused.value) == "57P03"
        assert attempts.retries == {"57P03": 2}
    finally:
        last.close()
        sh(f"for i in $(seq 100); do systemctl is-active -q postgresql@{VERSION}-main || break; sleep 0.1; done; "
           f"systemctl reset-failed postgresql@{VERSION}-main; systemctl start postgresql@{VERSION}-main")
        wait_until_it_answers()
