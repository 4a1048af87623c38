"""A threaded service on psycopg2's pool: each unit of work borrows one connection and gives it back.

The pattern:

* one pool per process, never more than HEADROOM_POOL_SIZE connections (the budget headroom gives
  this instance); the DSN from HEADROOM_DSN or libpq's PG* variables;
* a worker holds a connection for one unit of work only, and returns it in ``finally``, also when
  the work fails;
* workers beyond the pool size wait for a connection: psycopg2's pool does not wait, it raises
  PoolError when all its connections are out;
* opening a connection retries 53300 and 57P03 with capped exponential backoff and full jitter
  (retry.py); every other error reaches the caller at once.

psycopg2's pool has no queue and does not grow in the background: while the server has fewer
free slots than the budget, workers race for the connections it has, and one that keeps losing
gets 53300 once its retries are spent. Retries ride out a restart or a burst of other clients;
a lasting shortage is a budget that does not fit (psycopg 3's pool waits instead).

    HEADROOM_POOL_SIZE=8 HEADROOM_DSN='host=db1 dbname=app user=app' python service_psycopg2.py
"""

import concurrent.futures
import os
import threading

from psycopg2.pool import ThreadedConnectionPool

from retry import Retry, dsn, pool_size


class Service:
    def __init__(self):
        self.size = pool_size()
        # ThreadedConnectionPool, not SimpleConnectionPool: the workers are threads, and
        # SimpleConnectionPool changes its lists of free and used connections without a lock, so
        # two threads can be handed the same connection, or lose one.
        # minconn is raised to the pool size after construction: the constructor opens minconn
        # connections at once (on a full server that fails, outside any retry), and putconn closes
        # every connection above minconn (a new connection for each unit of work). So the pool
        # opens its connections as workers need them, through the retry, and keeps them.
        self.pool = ThreadedConnectionPool(0, self.size, dsn())
        self.pool.minconn = self.size
        self.slots = threading.BoundedSemaphore(self.size)
        self.retry = Retry()

    def handle(self, request):
        with self.slots:
            conn = self.retry(self.pool.getconn)
            try:
                return self.work(conn, request)
            finally:
                self.pool.putconn(conn)  # a connection that broke is discarded, not reused

    @staticmethod
    def work(conn, request):
        """One short transaction: commit on success, rollback on error (the connection stays open)."""
        with conn, conn.cursor() as cur:
            cur.execute("SELECT %s::int FROM pg_sleep(0.01)", (request,))
            return cur.fetchone()[0]

    def close(self):
        self.pool.closeall()


def main():
    service = Service()
    workers = int(os.environ.get("HEADROOM_WORKERS", "300"))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(service.handle, range(workers)))
    service.close()
    print(f"{len(results)} requests, retries {dict(service.retry.retries)}")


if __name__ == "__main__":
    main()
