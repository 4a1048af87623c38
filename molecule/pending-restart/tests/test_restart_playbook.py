"""playbooks/restart.yml when the pending configuration does not start: it fails, and the server
runs again on the file it last started with.

The fault passes every check before the restart: a preload library whose file exists in $libdir
but is no library (the postmaster then fails with "invalid ELF header").
"""

import json

import pytest
from conftest import PROJECT, SCENARIO, ansible_playbook

BROKEN = "headroom_broken"


@pytest.fixture
def broken_library(host, pg):
    libdir = host.check_output("/usr/lib/postgresql/%s/bin/pg_config --pkglibdir", str(pg.version))
    path = f"{libdir}/{BROKEN}.so"
    host.run_expect([0], "echo 'not a library' > %s", path)
    yield path
    host.run_expect([0], "rm -f %s", path)


def test_a_restart_that_fails_brings_the_server_back_on_the_file_it_started_with(host, pg, broken_library):
    managed = f"{pg.config_dir}/conf.d/50-headroom.conf"
    started_with = host.file(managed).sha256sum
    name = host.backend.get_hostname()

    tuned = ansible_playbook(SCENARIO / "tune.yml", limit=name, extra_vars={
        "postgresql_tuning_overrides": {"shared_buffers": "192MB", "shared_preload_libraries": BROKEN}})
    assert tuned.returncode == 0, tuned.output[-3000:]
    assert pg.sql("SELECT pending_restart FROM pg_settings WHERE name = 'shared_preload_libraries'") == "t"
    before_restart = pg.start_time()

    restarted = ansible_playbook(PROJECT / "playbooks/restart.yml", limit=name)

    assert restarted.returncode != 0, restarted.output[-3000:]
    assert "did not come back after a restart with the new settings" in restarted.output, restarted.output[-3000:]
    assert "The previous managed file is back in place and the server runs again" in restarted.output
    assert BROKEN in restarted.output  # the server's log lines say why
    clusters = json.loads(host.check_output("pg_lsclusters --json"))
    assert [c["running"] for c in clusters] == [1]
    assert pg.start_time() != before_restart  # it was restarted, and answers
    assert host.file(managed).sha256sum == started_with
    assert pg.show("shared_preload_libraries") == ""
    assert pg.show("shared_buffers") == "192MB"
    # What runs is what the files say: nothing is reported as waiting for a restart.
    assert pg.sql("SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
