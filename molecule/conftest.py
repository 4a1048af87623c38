"""Fixtures the scenarios' testinfra tests share: the cluster, SQL, the container's limits."""

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest
import yaml
from xdist.scheduler import LoadScopeScheduling


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


class _OneWorkerPerHost(LoadScopeScheduling):
    """pytest-xdist scheduling that keeps one host's tests together, in order, on one worker,
    while the hosts run side by side: a scenario's hosts are separate containers. The scope
    of a test is the molecule host its id names (testinfra ids are ``ansible://HOST``, with
    the test's own parameters after it)."""

    def __init__(self, config, log=None):
        super().__init__(config, log)
        with open(os.environ["MOLECULE_INVENTORY_FILE"], encoding="utf-8") as handle:
            hosts = yaml.safe_load(handle)["all"]["hosts"]
        # Longest first, so that a host whose name extends another's is not taken for it.
        self._hosts = re.compile("|".join(re.escape(f"://{name}") for name in sorted(hosts, key=len, reverse=True)))

    def _split_scope(self, nodeid):
        found = self._hosts.search(nodeid)
        return found.group(0) if found else nodeid


def proc_stat(pid):
    """State and parent of a process (/proc/<pid>/stat), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            # pid (comm) state ppid ...: comm may hold spaces, so split after its ")".
            state, ppid = handle.read().rsplit(")", 1)[1].split()[:2]
    except (OSError, IndexError, ValueError):
        return None
    return state, int(ppid)


def children_of(pid):
    """The processes whose parent is ``pid`` (from /proc)."""
    return {int(entry) for entry in os.listdir("/proc")
            if entry.isdigit() and (proc_stat(entry) or ("", 0))[1] == pid}


def stopped_or_gone(pid, timeout=2.0):
    """Wait until ``pid`` has stopped: os.kill returns before SIGSTOP takes effect, and until it
    does the process may still fork a child that a walk of its children would miss."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = proc_stat(pid)
        if found is None or found[0] in ("T", "t", "Z", "X"):
            return
        time.sleep(0.005)


def kill_tree(pid):
    """SIGKILL ``pid`` and every process under it, as a crash of the controller would end them.
    Ansible's forked workers run in sessions of their own, which a kill of the process group
    misses: a surviving worker could go on changing the host after the test moved on. Each
    process is stopped first, so none forks a new one between the walk and the kill."""
    stopped, todo = set(), {pid}
    while todo:
        current = todo.pop()
        try:
            os.kill(current, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        stopped.add(current)
        stopped_or_gone(current)
        todo |= children_of(current) - stopped
    for process in stopped:
        try:
            os.kill(process, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def kill_at_task():
    """kill_at_task(run, header): kill a running ansible-playbook (a Popen with text stdout) and
    every process under it when it prints the task header that starts with ``header``."""

    def kill(run, header):
        for line in run.stdout:
            if line.startswith(header):
                kill_tree(run.pid)
                break
        run.wait()
        assert run.returncode == -signal.SIGKILL, f"the run ended before {header!r}"

    return kill


def pytest_xdist_make_scheduler(config, log):
    """Verifier option ``dist: loadscope`` (the shared molecule config) means one worker per host."""
    if config.getvalue("dist") == "loadscope" and "MOLECULE_INVENTORY_FILE" in os.environ:
        return _OneWorkerPerHost(config, log)
    return None
