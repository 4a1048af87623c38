"""A threaded service on psycopg 3's pool (psycopg_pool.ConnectionPool): workers wait for a connection.

The pattern:

* one pool per process of exactly HEADROOM_POOL_SIZE connections (the budget headroom gives this
  instance; min_size = max_size, so it neither grows past the budget nor reconnects after idle
  periods); the DSN from HEADROOM_DSN or libpq's PG* variables;
* ``with pool.connection()`` lends a connection for one unit of work and takes it back, also when
  the work fails; workers beyond the pool size wait in the pool's queue (up to its timeout);
* the pool opens its connections through a connect that retries 53300 and 57P03 with capped
  exponential backoff and full jitter (retry.py); every other error reaches the caller at once;
* one connection at startup, through the same retry, so a wrong DSN or password stops the service
  there: afterwards the pool reconnects in the background and callers would only see PoolTimeout.

    HEADROOM_POOL_SIZE=8 HEADROOM_DSN='host=db1 dbname=app user=app' python service_psycopg3.py
"""

import concurrent.futures
import os

import psycopg
from psycopg_pool import ConnectionPool

from retry import Retry, dsn, pool_size


class Service:
    def __init__(self):
        self.size = pool_size()
        retry = self.retry = Retry()

        class Connection(psycopg.Connection):
            """psycopg's connection, whose connect() goes through the retry."""

            @classmethod
            def connect(cls, *args, **kwargs):
                return retry(super().connect, *args, **kwargs)

        Connection.connect(dsn()).close()
        self.pool = ConnectionPool(dsn(), connection_class=Connection, min_size=self.size, max_size=self.size,
                                   name="service", open=True)

    def handle(self, request):
        with self.pool.connection() as conn:  # one transaction: commit on success, rollback on error
            return conn.execute("SELECT %s::int FROM pg_sleep(0.01)", (request,)).fetchone()[0]

    def close(self):
        self.pool.close()


def main():
    service = Service()
    workers = int(os.environ.get("HEADROOM_WORKERS", "300"))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(service.handle, range(workers)))
    service.close()
    print(f"{len(results)} requests, retries {dict(service.retry.retries)}")


if __name__ == "__main__":
    main()
