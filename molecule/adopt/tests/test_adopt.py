"""On a cluster it did not install, the role adds its file and leaves the user's settings alone.

Debian 13 is adopted in config mode "full" (molecule.yml): headroom replaces the whole
postgresql.conf and restarts, and the cluster's own settings must still be live after it.
"""

import json

import pytest


def full_mode(host):
    return host.backend.get_hostname() == "headroom-adopt-debian13"


@pytest.fixture
def report(host):
    return json.loads(host.file("/var/lib/headroom-test/report.json").content_string)


def test_the_users_lines_in_postgresql_conf_are_untouched(host, pg):
    if full_mode(host):
        pytest.skip("full mode replaces postgresql.conf; test_full_mode_* check what it kept")
    before = host.file("/var/lib/headroom-test/user-lines").content_string
    now = host.run(
        "grep -v '^# BEGIN headroom\\|^# END headroom\\|^include_dir' %s/postgresql.conf | sha256sum", pg.config_dir
    )
    assert now.stdout == before


def test_the_users_custom_settings_are_still_live(pg):
    assert pg.show("log_min_duration_statement") == "250ms"
    assert pg.show("log_lock_waits") == "on"
    assert pg.show("deadlock_timeout") == "2s"


def test_archiving_and_the_preload_library_are_still_live(pg):
    assert pg.show("archive_mode") == "on"
    assert pg.show("archive_command") == "cp %p /var/lib/postgresql/archive/%f"
    assert pg.show("shared_preload_libraries") == "pg_stat_statements"
    # Reading the view fails unless the library was loaded at the server's start.
    assert pg.sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT count(*) >= 0 FROM pg_stat_statements") == "t"


def test_full_mode_restarted_on_a_postgresql_conf_that_kept_the_clusters_own_settings(host, pg):
    if not full_mode(host):
        pytest.skip("include mode")
    assert pg.start_time() != host.file("/var/lib/headroom-test/start-before").content_string.strip()
    conf = host.file(f"{pg.config_dir}/postgresql.conf").content_string
    assert "headroom (role postgresql_tuning, config mode \"full\")" in conf
    for line in ("archive_mode = on", "archive_command = 'cp %p /var/lib/postgresql/archive/%f'",
                 "shared_preload_libraries = pg_stat_statements", "log_min_duration_statement = 250",
                 "deadlock_timeout = 2s", f"data_directory = '/var/lib/postgresql/{pg.version}/main'"):
        assert f"\n{line}\n" in conf, line
    assert pg.sql("SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"


def test_include_dir_was_activated_for_the_managed_file(host, pg):
    if full_mode(host):
        pytest.skip("full mode writes no include file")
    conf = host.file(f"{pg.config_dir}/postgresql.conf").content_string
    assert "\ninclude_dir = 'conf.d'\n" in conf
    assert host.file(f"{pg.config_dir}/conf.d/50-headroom.conf").exists


def test_alter_system_conflict_is_reported_and_left_alone(report, pg):
    overridden = {o["name"]: o for o in report["overridden"]}
    assert overridden["work_mem"]["sourcefile"].endswith("postgresql.auto.conf")
    assert pg.show("work_mem") == "7MB"


def managed_settings(pg):
    name = "postgresql.conf" if full_mode(pg.host) else "conf.d/50-headroom.conf"
    lines = pg.host.file(f"{pg.config_dir}/{name}").content_string.splitlines()
    return dict(line.split(" = ", 1) for line in lines if " = " in line and not line.startswith("#"))


def test_reported_pending_settings_are_exactly_the_servers_pending_restart(report, pg):
    server_pending = set(pg.sql("SELECT name FROM pg_settings WHERE pending_restart").split())
    assert {p["name"] for p in report["pending"]} == server_pending
    assert server_pending <= set(managed_settings(pg))


@pytest.mark.parametrize("name", ["effective_cache_size", "random_page_cost", "maintenance_work_mem", "checkpoint_completion_target"])
def test_reloadable_managed_values_are_live(pg, name):
    assert pg.show(name) == managed_settings(pg)[name].strip("'")
