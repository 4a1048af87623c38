"""Each write of the managed file leaves a backup; the role keeps postgresql_tuning_backups_kept of
them, and the newest one older than the postmaster's start (a failed restart puts it back)."""

import pytest
from conftest import SCENARIO, ansible_playbook


@pytest.fixture
def writes(host):
    """Five writes on this host, with two backups kept (writes.yml); the hosts' tests run side by side."""
    result = ansible_playbook(SCENARIO / "writes.yml", limit=host.backend.get_hostname())
    assert result.returncode == 0, result.output[-3000:]
    return result


def test_after_five_writes_two_backups_remain_and_the_one_the_server_started_with(host, pg, writes):
    managed = f"{pg.config_dir}/conf.d/50-headroom.conf"
    assert "\nwork_mem = 15MB\n" in host.file(managed).content_string
    started = float(pg.sql("SELECT extract(epoch FROM pg_postmaster_start_time())"))
    listing = host.check_output("find %s -name '50-headroom.conf.*~' -printf '%%T@ %%p\\n'", f"{pg.config_dir}/conf.d")
    backups = sorted((float(mtime), path) for mtime, path in (line.split(" ", 1) for line in listing.splitlines()))
    newest_two = backups[-2:]
    started_with = [b for b in backups if b[0] <= started][-1]
    assert len(backups) == 3, backups
    assert set(backups) == {*newest_two, started_with}
    assert ["\nwork_mem = 13MB\n" in host.file(newest_two[0][1]).content_string,
            "\nwork_mem = 14MB\n" in host.file(newest_two[1][1]).content_string] == [True, True]
    assert host.file(started_with[1]).sha256sum == host.file("/var/lib/headroom-test/started-with.sha").content_string.split()[0]
