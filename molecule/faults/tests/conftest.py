"""Runs of the project's roles against this scenario's containers, and what the tests compare."""

import json
import os
import subprocess
from pathlib import Path

import pytest

SCENARIO = Path(__file__).resolve().parents[1]
PROJECT = SCENARIO.parents[1]

# Every managed file with its mode and owner, packages, clusters, and when the server
# started and last read its files (or psql's error on a stopped server): equal before and
# after means nothing changed.
FINGERPRINT = r"""
find /etc/postgresql /etc/pgbouncer -printf '%p %m %u:%g\n' 2>/dev/null | sort
find /etc/postgresql /etc/pgbouncer /var/lib/postgresql -type f \( -path '/etc/*' -o -name postgresql.auto.conf \) \
  -exec sha256sum {} + 2>/dev/null | sort
echo "packages $(dpkg-query -W -f '${Package} ${Version} ${db:Status-Status}\n' | sha256sum)"
pg_lsclusters --no-header
runuser -u postgres -- psql -XAtqc 'SELECT pg_postmaster_start_time(), pg_conf_load_time()' 2>&1 || true
"""


def ansible_playbook(playbook, *args, limit=None, extra_vars=None, popen=False):
    """ansible-playbook with molecule's inventory and config, as converge runs."""
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    command = ["ansible-playbook", "-i", str(ephemeral / "inventory"), str(playbook), *args]
    if limit:
        command += ["--limit", limit]
    if extra_vars is not None:
        command += ["--extra-vars", json.dumps(extra_vars)]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ephemeral / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="yaml", ANSIBLE_PIPELINING="1")
    if popen:
        return subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    return subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900, check=False)


def tune(host, **variables):
    """One run of the tuning role on this host with the given postgresql_tuning_* inputs."""
    result = ansible_playbook(SCENARIO / "tune.yml", limit=host.backend.get_hostname(), extra_vars=variables)
    result.output = " ".join((result.stdout + result.stderr).split())  # the yaml callback folds long lines
    return result


def fingerprint(host):
    return host.check_output(FINGERPRINT)


@pytest.fixture
def before(host):
    """The host's fingerprint at the start of the test."""
    return fingerprint(host)
