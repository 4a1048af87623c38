"""Fixtures the scenarios' testinfra tests share: the cluster, SQL, the container's limits."""

import json
import subprocess
from dataclasses import dataclass

import pytest


@dataclass
class Cluster:
    """One PostgreSQL cluster on a test host, as pg_lsclusters describes it."""

    host: object
    record: dict

    @property
    def version(self):
        return int(self.record["version"])

    @property
    def unit(self):
        return f"postgresql@{self.record['version']}-{self.record['cluster']}"

    @property
    def config_dir(self):
        return self.record["configdir"]

    def sql(self, query):
        """Run SQL as postgres over the cluster's socket; stdout, unaligned and tuples only."""
        return self.host.check_output(
            "runuser -u postgres -- psql -XAtq --set=ON_ERROR_STOP=1 --host=%s --port=%s --dbname=postgres --command=%s",
            self.record["socketdir"],
            self.record["port"],
            query,
        )

    def show(self, name):
        return self.sql(f"SHOW {name}")

    def start_time(self):
        """When the postmaster started: unchanged means the server was not restarted."""
        return self.sql("SELECT pg_postmaster_start_time()")


@pytest.fixture
def pg(host):
    """The host's only cluster."""
    found = json.loads(host.check_output("pg_lsclusters --json"))
    assert len(found) == 1, found
    return Cluster(host, found[0])


@pytest.fixture
def memory_limit(host):
    """The memory limit Docker set on the container (bytes), asked of the engine, not the container."""
    out = subprocess.run(
        ["docker", "inspect", "--format", "{{.HostConfig.Memory}}", host.backend.get_hostname()],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip())


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """Group each test by its host, so that pytest-xdist (``--dist loadgroup``, set in the
    scenarios' verifier options) runs one host's tests in order on one worker while the
    hosts run side by side: a scenario's hosts are separate containers."""
    for item in items:
        host = getattr(item, "callspec", None) and item.callspec.params.get("_testinfra_host")
        if host is not None:
            item.add_marker(pytest.mark.xdist_group(host.backend.get_hostname()))
