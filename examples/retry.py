"""The two connection errors worth retrying, the backoff between attempts, and the budget from the environment.

Shared by service_psycopg2.py and service_psycopg3.py:

* ``53300`` too_many_connections: the server has no slot left for this role (max_connections, the
  reserved slots, or a role's or database's CONNECTION LIMIT);
* ``57P03`` cannot_connect_now: the server is starting up, shutting down or in recovery, as during
  a restart.

Both come while connecting, before any statement ran, so a retry cannot repeat work; both go away
by themselves. Every other error is raised at once: retrying a wrong password, a missing database
or a failing query only delays the failure and adds load.

The wait before retry n (from 0) is uniform in [0, min(cap, base * 2**n)]: capped exponential
backoff with full jitter, so clients refused together do not come back together.

libpq gives no SQLSTATE for an error during connection startup (psycopg 3's ``sqlstate`` and
psycopg2's ``pgcode`` are None), so there the error is known by the server's message, which is
English when the server's lc_messages is C or en (Debian's default, and headroom's clusters).
Through PgBouncer the same two kinds of refusal come in PgBouncer's words, and count the same.
"""

import collections
import logging
import os
import random
import threading
import time

log = logging.getLogger("headroom.retry")

TRANSIENT = {"53300": "too_many_connections", "57P03": "cannot_connect_now"}

#: What PostgreSQL (12 to 18) says with each code when it refuses a connection, and PgBouncer's
#: refusals of the same kind (its src/client.c and src/objects.c; PgBouncer sends them as 08P01):
#: no client slot left (max_client_conn, an application's client share), and a process that is
#: stopping (a login in progress at SIGTERM during a rolling restart).
MESSAGES = {
    "53300": ("too many clients already", "remaining connection slots are reserved", "too many connections for",
              "no more connections allowed (max_client_conn)", "client connections exceeded (max_"),
    "57P03": ("the database system is starting up", "the database system is shutting down",
              "the database system is in recovery mode", "the database system is not yet accepting connections",
              "the database system is not accepting connections", "pooler is shutting down"),
}


def transient(exc):
    """``"53300"`` or ``"57P03"`` when ``exc`` is one of the two retryable errors, else None."""
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if code:
        return code if code in TRANSIENT else None
    text = str(exc)
    for code, phrases in MESSAGES.items():
        if any(phrase in text for phrase in phrases):
            return code
    return None


class Retry:
    """Call a connect function until it succeeds, retrying only the transient errors; count the retries.

    HEADROOM_RETRY_ATTEMPTS (default 10), HEADROOM_RETRY_BASE and HEADROOM_RETRY_CAP (seconds,
    default 0.05 and 2): with the defaults a caller gives up after about 5 s of waiting on average,
    9 s at most, long enough for a restart.
    """

    def __init__(self):
        self.attempts = int(os.environ.get("HEADROOM_RETRY_ATTEMPTS", "10"))
        self.base = float(os.environ.get("HEADROOM_RETRY_BASE", "0.05"))
        self.cap = float(os.environ.get("HEADROOM_RETRY_CAP", "2"))
        self.retries = collections.Counter()  # SQLSTATE -> retries, for logs and metrics
        self._lock = threading.Lock()

    def __call__(self, connect, *args, **kwargs):
        for attempt in range(self.attempts):
            try:
                return connect(*args, **kwargs)
            except Exception as exc:
                code = transient(exc)
                if code is None or attempt == self.attempts - 1:
                    raise
                delay = random.uniform(0, min(self.cap, self.base * 2 ** attempt))
                with self._lock:
                    self.retries[code] += 1
                log.info("%s %s, retry %d of %d in %.3f s", code, TRANSIENT[code], attempt + 1, self.attempts - 1, delay)
                time.sleep(delay)
        raise ValueError("HEADROOM_RETRY_ATTEMPTS must be at least 1")


def pool_size():
    """HEADROOM_POOL_SIZE: the connections this instance may hold, its share of the fleet's budget.

    No default: a default is how a fleet of instances overruns max_connections.
    """
    value = os.environ.get("HEADROOM_POOL_SIZE", "")
    if not value.isdigit() or int(value) < 1:
        raise RuntimeError(f"HEADROOM_POOL_SIZE must be a positive integer (the budget headroom gives this instance), not {value!r}")
    return int(value)


def dsn():
    """HEADROOM_DSN, else "": libpq then reads PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSFILE, ..."""
    return os.environ.get("HEADROOM_DSN", "")
