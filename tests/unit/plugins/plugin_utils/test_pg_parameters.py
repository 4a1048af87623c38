"""The per-version table of PostgreSQL parameters and the rounding of usable memory."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_parameters import (
    READ_ONLY,
    canonical_name,
    check_version,
    known_parameters,
    memory_range,
    version_value,
)
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_sizing import stable_usable

GB = 1024**3
MB = 1024**2


@pytest.mark.parametrize(
    ("sentence", "name", "versions"),
    [
        ("shared_buffers exists everywhere", "shared_buffers", range(13, 19)),
        ("reserved_connections came in 16", "reserved_connections", range(16, 19)),
        ("io_method came in 18", "io_method", [18]),
        ("idle_session_timeout came in 14", "idle_session_timeout", range(14, 19)),
        ("stats_temp_directory went in 15", "stats_temp_directory", [13, 14]),
        ("old_snapshot_threshold went in 17", "old_snapshot_threshold", range(13, 17)),
        ("force_parallel_mode became debug_parallel_query in 16", "force_parallel_mode", range(13, 16)),
        ("debug_parallel_query came in 16", "debug_parallel_query", range(16, 19)),
        ("transaction_timeout came in 17", "transaction_timeout", [17, 18]),
    ],
)
def test_known_parameters_by_version(sentence, name, versions):
    assert [version for version in range(13, 19) if name in known_parameters(version)] == list(versions), sentence


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        ("sort_mem", 15, "work_mem"),
        ("vacuum_mem", 13, "maintenance_work_mem"),
        ("ssl_ecdh_curve", 17, "ssl_ecdh_curve"),
        ("ssl_ecdh_curve", 18, "ssl_groups"),
        ("work_mem", 18, "work_mem"),
    ],
)
def test_aliases_resolve_to_the_parameter_the_server_uses(name, version, expected):
    assert canonical_name(name, version) == expected


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        ("shared_buffers", 18, ("8kB", 16, 1073741823)),
        ("work_mem", 13, ("kB", 64, 2147483647)),
        ("maintenance_work_mem", 16, ("kB", 1024, 2147483647)),
        ("maintenance_work_mem", 17, ("kB", 64, 2147483647)),
        ("max_wal_size", 15, ("MB", 2, 2147483647)),
        ("random_page_cost", 18, None),
    ],
)
def test_memory_ranges_follow_the_server(name, version, expected):
    assert memory_range(name, version) == expected


def test_read_only_parameters_include_the_compiled_in_ones():
    assert {"block_size", "wal_segment_size", "server_version"} <= READ_ONLY


@pytest.mark.parametrize("version", [12, 19, "16.2", True, None])
def test_unsupported_versions_are_refused(version):
    with pytest.raises(AnsibleFilterError, match=r"is not a supported PostgreSQL major version"):
        check_version(version)


def test_a_version_may_be_a_string_of_digits():
    assert check_version("17") == 17


@pytest.mark.parametrize(
    ("sentence", "usable", "expected"),
    [
        ("a whole number of GB stays as it is", 16 * GB, 16 * GB),
        ("a power of two stays as it is", 512 * MB, 512 * MB),
        ("15995MB rounds down to a 128MB step", 15995 * MB, 15872 * MB),
        ("15999MB rounds to the same value as 15995MB", 15999 * MB, 15872 * MB),
        ("the loss is at most 1/64", 100 * GB + 1, 100 * GB),
    ],
)
def test_stable_usable(sentence, usable, expected):
    assert stable_usable(usable) == expected, sentence


@pytest.mark.parametrize(
    "sentence, value, version, expected",
    [
        ("PostgreSQL 17 keeps the boolean", True, 17, True),
        ("PostgreSQL 18 writes true as the three stages 'on' stands for", True, 18, "receipt,authentication,authorization"),
        ("PostgreSQL 18 writes 'on' the same way", "on", 18, "receipt,authentication,authorization"),
        ("PostgreSQL 18 writes false as no stage", False, 18, ""),
        ("a list given for PostgreSQL 18 stays as given", "receipt,authorization", 18, "receipt,authorization"),
    ],
)
def test_log_connections_is_spelt_as_the_version_reads_it(sentence, value, version, expected):
    assert version_value("log_connections", value, version) == expected, sentence


def test_other_parameters_keep_their_value():
    assert version_value("log_disconnections", True, 18) is True
