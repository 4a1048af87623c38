"""The tuning role sizes each container from its own memory limit and makes it live."""

import pytest
from ansible_collections.headroom.pg.plugins.filter.postgresql_sizing import effective_resources, pg_tune
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_units import parse_size


@pytest.fixture
def expected(host, pg, memory_limit):
    """What pg_tune gives for the container's limit, computed here from the engine's numbers."""
    cpus = int(host.check_output("getconf _NPROCESSORS_ONLN"))
    resources = effective_resources({"memory": memory_limit, "cpus": cpus})
    return pg_tune(
        {"memory": resources["memory"], "cpus": resources["cpus"], "version": pg.version, "profile": "web", "storage": "ssd",
         "reserved_connections": RESERVED.get(host.backend.get_hostname(), 0)}
    )


# molecule.yml: postgresql_tuning_reserved_connections on the PostgreSQL 16+ hosts.
RESERVED = {"headroom-tuning-debian13": 2, "headroom-tuning-forky": 2}


def full_mode(host):
    """Debian 13 runs the scenario in config mode "full" (molecule.yml)."""
    return host.backend.get_hostname() == "headroom-tuning-debian13"


@pytest.fixture
def managed_file(host, pg):
    name = "postgresql.conf" if full_mode(host) else "conf.d/50-headroom.conf"
    return host.file(f"{pg.config_dir}/{name}")


def test_managed_file_is_owned_by_postgres_and_not_world_readable(managed_file):
    assert managed_file.exists
    assert managed_file.user == "postgres"
    assert managed_file.mode == 0o640
    assert "headroom (role postgresql_tuning" in managed_file.content_string
    assert "\nmax_connections = " in managed_file.content_string


def test_full_mode_keeps_the_clusters_paths_and_writes_no_include_file(host, pg, managed_file):
    if not full_mode(host):
        assert "data_directory" in host.file(f"{pg.config_dir}/postgresql.conf").content_string
        return
    conf = managed_file.content_string
    assert f"data_directory = '/var/lib/postgresql/{pg.version}/main'" in conf
    assert f"hba_file = '{pg.config_dir}/pg_hba.conf'" in conf
    assert "port = 5432" in conf
    assert not host.file(f"{pg.config_dir}/conf.d/50-headroom.conf").exists


def test_running_max_connections_is_what_the_engine_gives_for_the_limit(pg, expected):
    assert int(pg.show("max_connections")) == expected["max_connections"]


def test_running_shared_buffers_is_sized_from_the_limit_not_the_machine(pg, expected, memory_limit):
    running = parse_size(pg.show("shared_buffers"))
    assert running == parse_size(expected["shared_buffers"])
    assert running <= memory_limit // 2


def test_nothing_waits_for_a_restart(pg):
    assert pg.sql("SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"


def test_server_read_the_files_without_errors(pg):
    assert pg.sql("SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"


def test_operations_roles_get_the_reserved_slots_on_16_and_later(host, pg):
    if host.backend.get_hostname() not in RESERVED:
        assert pg.version < 16 or pg.show("reserved_connections") == "0"
        return
    assert pg.show("reserved_connections") == str(RESERVED[host.backend.get_hostname()])
    assert pg.sql("SELECT pg_has_role('headroom_monitor', 'pg_use_reserved_connections', 'MEMBER')") == "t"
