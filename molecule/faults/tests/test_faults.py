"""Faults a config push meets at 3 a.m.: each run ends with the server answering and the
previous configuration in place (or the new one live, when the run succeeds)."""

import pytest
from conftest import SCENARIO, ansible_playbook, fingerprint, tune

TASK = "TASK [headroom.pg.postgresql_tuning : "

# A log_line_prefix that tries every way out of its line: quote, backslash, "#", "=".
HOSTILE = "%m [%p] it's \\ a # test' fsync = off, x = '"


def managed_file(pg):
    return f"{pg.config_dir}/conf.d/50-headroom.conf"


def file_errors(pg):
    return pg.sql("SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL AND error <> 'setting could not be applied'")


@pytest.fixture
def huge_pages_the_kernel_does_not_have(host):
    """/proc/meminfo claims 100000 free huge pages (a bind mount); the kernel has none."""
    host.check_output(
        "sed -E 's/^(HugePages_(Total|Free):).*/\\1 100000/' /proc/meminfo > /root/meminfo.claimed"
        " && mount --bind /root/meminfo.claimed /proc/meminfo"
    )
    yield
    host.run("umount /proc/meminfo")


@pytest.fixture
def stopped(host, pg):
    host.check_output("systemctl stop %s", pg.unit)
    yield
    host.run("systemctl start %s", pg.unit)


@pytest.fixture
def full_include_dir(host, pg):
    """conf.d on a small tmpfs, with the managed file copied in and the rest of the space filled."""
    confd = f"{pg.config_dir}/conf.d"
    host.check_output(
        f"mkdir -p /root/saved && cp -a {confd}/. /root/saved/ && mount -t tmpfs -o size=128k tmpfs {confd}"
        f" && cp -a /root/saved/. {confd}/ && (dd if=/dev/zero of={confd}/filler bs=4k 2>/dev/null || true)"
    )
    assert host.check_output("df --output=avail -k %s | tail -n 1", confd).strip() == "0"
    yield confd
    host.run(f"umount {confd} && rm -rf /root/saved")


def test_security_defaults_are_live(pg):
    assert pg.show("password_encryption") == "scram-sha-256"
    # PostgreSQL 18 logs connections by stage; "on" still works there, as these three.
    assert pg.show("log_connections") == ("receipt,authentication,authorization" if pg.version >= 18 else "on")
    assert pg.show("log_disconnections") == "on"


def test_each_connection_and_disconnection_is_logged(host, pg):
    marker = "headroom_faults_log_probe"
    pg.sql(f"SELECT '{marker}'")
    log = host.file(pg.record["logfile"]).content_string
    assert "connection authorized: user=postgres database=postgres" in log
    assert "disconnection: session time:" in log


def test_managed_file_and_include_dir_are_not_world_readable(host, pg):
    include_dir = host.file(f"{pg.config_dir}/conf.d")
    assert (include_dir.user, include_dir.group, include_dir.mode) == ("postgres", "postgres", 0o750)
    managed = host.file(managed_file(pg))
    assert (managed.user, managed.group, managed.mode) == ("postgres", "postgres", 0o640)
    # Debian's wrappers still list the cluster for an unprivileged user.
    assert "main" in host.check_output("runuser -u nobody -- pg_lsclusters")


def test_a_hostile_override_value_stays_one_parameter_with_exactly_that_value(host, pg):
    result = tune(host, postgresql_tuning_overrides={"log_line_prefix": HOSTILE})
    assert result.returncode == 0, result.output[-3000:]
    assert pg.show("log_line_prefix") == HOSTILE
    assert pg.show("fsync") == "on"
    assert pg.sql("SELECT count(*) FROM pg_file_settings WHERE name IN ('fsync', 'x')") == "0"
    assert file_errors(pg) == "0"


def test_huge_pages_on_is_refused_before_any_change_when_the_kernel_has_too_few(host, pg, before):
    result = tune(host, postgresql_tuning_allow_restart=True, postgresql_tuning_overrides={"huge_pages": "on"})
    assert result.returncode != 0
    assert "sets huge_pages = on, but cluster" in result.output
    assert "HugePages_Free 0" in result.output and "Nothing was changed" in result.output
    assert fingerprint(host) == before


def test_huge_pages_that_stop_the_server_starting_are_rolled_back(host, pg, huge_pages_the_kernel_does_not_have):
    old_file = host.file(managed_file(pg)).sha256sum
    result = tune(host, postgresql_tuning_allow_restart=True, postgresql_tuning_ready_timeout=20,
                  postgresql_tuning_overrides={"huge_pages": "on"})
    assert result.returncode != 0
    assert "did not come back after a restart" in result.output
    assert "could not map anonymous shared memory" in result.output  # the server's own log line
    assert host.file(managed_file(pg)).sha256sum == old_file
    assert host.run("pg_isready -q").rc == 0
    assert pg.sql("SELECT 1") == "1"
    assert pg.show("huge_pages") != "on"
    assert file_errors(pg) == "0"


def test_a_failed_restart_of_an_earlier_runs_write_goes_back_to_the_file_the_server_started_with(
    host, pg, huge_pages_the_kernel_does_not_have
):
    started_with = host.file(managed_file(pg)).sha256sum
    # First run: restarts not allowed, so the new file waits for one (the restart.yml case).
    pending = tune(host, postgresql_tuning_allow_restart=False, postgresql_tuning_overrides={"huge_pages": "on"})
    assert pending.returncode == 0, pending.output[-3000:]
    assert host.file(managed_file(pg)).sha256sum != started_with
    assert pg.sql("SELECT pending_restart FROM pg_settings WHERE name = 'huge_pages'") == "t"
    # Second run: it writes nothing, restarts, and the server does not come back.
    result = tune(host, postgresql_tuning_allow_restart=True, postgresql_tuning_ready_timeout=20,
                  postgresql_tuning_overrides={"huge_pages": "on"})
    assert result.returncode != 0
    assert "did not come back after a restart" in result.output
    assert "The previous managed file is back in place" in result.output
    assert "could not map anonymous shared memory" in result.output
    assert host.file(managed_file(pg)).sha256sum == started_with
    assert pg.sql("SELECT 1") == "1"
    assert pg.show("huge_pages") != "on"
    assert file_errors(pg) == "0"


def test_a_stopped_cluster_the_role_may_not_start_is_left_as_it_is(host, pg, stopped):
    before = fingerprint(host)
    result = tune(host, postgresql_tuning_start_stopped=False, postgresql_tuning_overrides={"work_mem": "7MB"})
    assert result.returncode != 0
    assert "is stopped and postgresql_tuning_start_stopped is false" in result.output
    assert fingerprint(host) == before
    assert "down" in host.check_output("pg_lsclusters --no-header")


def test_a_stopped_cluster_is_reported_started_and_tuned(host, pg, stopped):
    result = tune(host, postgresql_tuning_overrides={"work_mem": "7MB"})
    assert result.returncode == 0, result.output[-3000:]
    assert "was stopped when the run began" in result.output
    assert pg.sql("SELECT 1") == "1"
    assert pg.show("work_mem") == "7MB"


def test_a_full_disk_under_the_include_dir_fails_the_write_and_keeps_the_old_file(host, pg, full_include_dir):
    old_file = host.file(managed_file(pg)).sha256sum
    old_load = pg.sql("SELECT pg_conf_load_time()")
    old_work_mem = pg.show("work_mem")
    result = tune(host, postgresql_tuning_overrides={"work_mem": "9MB"})
    assert result.returncode != 0
    assert "could not write" in result.output and "No space left on device" in result.output
    assert host.file(managed_file(pg)).sha256sum == old_file
    assert host.check_output("ls %s | grep '[.]conf$'", full_include_dir).split() == ["50-headroom.conf"]
    assert pg.sql("SELECT 1") == "1"
    assert pg.sql("SELECT pg_conf_load_time()") == old_load
    assert pg.show("work_mem") == old_work_mem


def killed_at(kill_at_task, host, task, **variables):
    """Start a tuning run and kill it (ansible-playbook and every process under it) when it starts `task`."""
    run = ansible_playbook(SCENARIO / "tune.yml", limit=host.backend.get_hostname(), extra_vars=variables, popen=True)
    kill_at_task(run, TASK + task)


def test_killed_between_write_and_reload_the_next_run_still_reloads(kill_at_task, host, pg):
    killed_at(kill_at_task, host, "Read the configuration with the server binary",
              postgresql_tuning_overrides={"work_mem": "11MB"})
    assert "\nwork_mem = 11MB\n" in host.file(managed_file(pg)).content_string  # written ...
    assert pg.show("work_mem") != "11MB"  # ... and not yet live
    result = tune(host, postgresql_tuning_overrides={"work_mem": "11MB"})
    assert result.returncode == 0, result.output[-3000:]
    assert "Ask the server to re-read its files" in result.output
    assert pg.show("work_mem") == "11MB"


def test_killed_during_the_write_leaves_a_whole_file_and_the_next_run_converges(kill_at_task, host, pg):
    killed_at(kill_at_task, host, "Write the managed settings file", postgresql_tuning_overrides={"work_mem": "13MB"})
    content = host.file(managed_file(pg)).content_string
    assert content.endswith("\n") and "\nwal_buffers = " in content  # the last line: not truncated
    assert file_errors(pg) == "0"
    result = tune(host, postgresql_tuning_overrides={"work_mem": "13MB"})
    assert result.returncode == 0, result.output[-3000:]
    assert pg.show("work_mem") == "13MB"


def test_killed_during_the_restart_the_next_run_converges(kill_at_task, host, pg):
    inputs = {"postgresql_tuning_allow_restart": True, "postgresql_tuning_overrides": {"shared_buffers": "160MB"}}
    killed_at(kill_at_task, host, "Restart PostgreSQL", **inputs)
    result = tune(host, **inputs)
    assert result.returncode == 0, result.output[-3000:]
    assert pg.sql("SELECT 1") == "1"
    assert pg.show("shared_buffers") == "160MB"
    assert pg.sql("SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
