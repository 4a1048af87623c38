"""pg_tune, pg_max_connections, effective_resources, pg_size_bytes and pg_size_pretty."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.postgresql_sizing import (
    FilterModule,
    effective_resources,
    pg_max_connections,
    pg_size_bytes,
    pg_size_pretty,
    pg_tune,
)

GB = 1024**3
MB = 1024**2
KB = 1024


def spec(memory="16GB", cpus=4, version=18, profile="web", storage="ssd", **extra):
    return {"memory": memory, "cpus": cpus, "version": version, "profile": profile, "storage": storage, **extra}


def test_the_plugin_registers_every_filter_of_the_contract():
    assert set(FilterModule().filters()) == {
        "pg_tune",
        "pg_max_connections",
        "pg_size_bytes",
        "pg_size_pretty",
        "effective_resources",
    }


# Expected values are PGTune's formulas worked out by hand (le0pard/pgtune, configurationSlice.js):
# shared_buffers RAM/4 (desktop /16), effective_cache_size 3/4 RAM (desktop 1/4), maintenance_work_mem
# RAM/16 (dw /8) capped at 8GB, wal_buffers 3% of shared_buffers (above 14MB: 16MB), WAL sizes, costs and
# statistics by profile and storage, huge_pages 'try' from 2GB of shared_buffers, and with 4 CPUs or more
# per_gather ceil(cpus/2) capped at 4 except dw, maintenance workers likewise, max_parallel_workers = cpus.
PGTUNE_CASES = [
    (
        "web, 16GB, 4 CPUs, PostgreSQL 18 on SSD: PGTune's own example",
        spec("16GB", 4, 18, "web", "ssd"),
        {
            "shared_buffers": "4GB",
            "effective_cache_size": "12GB",
            "maintenance_work_mem": "1GB",
            "wal_buffers": "16MB",
            "huge_pages": "try",
            "min_wal_size": "1GB",
            "max_wal_size": "4GB",
            "checkpoint_completion_target": 0.9,
            "random_page_cost": 1.1,
            "effective_io_concurrency": 200,
            "default_statistics_target": 100,
            "max_parallel_workers_per_gather": 2,
            "max_parallel_workers": 4,
            "max_parallel_maintenance_workers": 2,
        },
    ),
    (
        "oltp, 32GB, 8 CPUs, PostgreSQL 17 on NVMe",
        spec("32GB", 8, 17, "oltp", "nvme"),
        {
            "shared_buffers": "8GB",
            "effective_cache_size": "24GB",
            "maintenance_work_mem": "2GB",
            "wal_buffers": "16MB",
            "min_wal_size": "2GB",
            "max_wal_size": "8GB",
            "random_page_cost": 1.1,
            "effective_io_concurrency": 1000,
            "max_worker_processes": 8,
            "max_parallel_workers_per_gather": 4,
            "max_parallel_workers": 8,
            "max_parallel_maintenance_workers": 4,
        },
    ),
    (
        "dw, 64GB, 16 CPUs, PostgreSQL 16 on HDD: RAM/8 for maintenance, per-gather workers not capped",
        spec("64GB", 16, 16, "dw", "hdd"),
        {
            "shared_buffers": "16GB",
            "effective_cache_size": "48GB",
            "maintenance_work_mem": "8GB",
            "wal_buffers": "16MB",
            "min_wal_size": "4GB",
            "max_wal_size": "16GB",
            "random_page_cost": 4.0,
            "effective_io_concurrency": 2,
            "default_statistics_target": 500,
            "max_worker_processes": 16,
            "max_parallel_workers_per_gather": 8,
            "max_parallel_workers": 16,
            "max_parallel_maintenance_workers": 4,
        },
    ),
    (
        "desktop, 8GB, 4 CPUs, PostgreSQL 15: RAM/16 shared, 1/4 cache, 15728kB of WAL buffers round up to 16MB",
        spec("8GB", 4, 15, "desktop", "ssd"),
        {
            "shared_buffers": "512MB",
            "effective_cache_size": "2GB",
            "maintenance_work_mem": "512MB",
            "wal_buffers": "16MB",
            "huge_pages": "off",
            "min_wal_size": "100MB",
            "max_wal_size": "2GB",
        },
    ),
    (
        "mixed, 2GB, 2 CPUs, PostgreSQL 14 on SAN",
        spec("2GB", 2, 14, "mixed", "san"),
        {
            "shared_buffers": "512MB",
            "effective_cache_size": "1536MB",
            "maintenance_work_mem": "128MB",
            "wal_buffers": "16MB",
            "random_page_cost": 1.1,
            "effective_io_concurrency": 300,
            "min_wal_size": "1GB",
            "max_wal_size": "4GB",
        },
    ),
    (
        "web, 1GB, 1 CPU, PostgreSQL 13: 3% of 256MB is 7864kB of WAL buffers",
        spec("1GB", 1, 13, "web", "ssd"),
        {
            "shared_buffers": "256MB",
            "effective_cache_size": "768MB",
            "maintenance_work_mem": "64MB",
            "wal_buffers": "7864kB",
            "huge_pages": "off",
        },
    ),
    (
        "oltp, 128GB, 32 CPUs, PostgreSQL 18: maintenance reaches the 8GB cap exactly",
        spec("128GB", 32, 18, "oltp", "ssd"),
        {
            "shared_buffers": "32GB",
            "effective_cache_size": "96GB",
            "maintenance_work_mem": "8GB",
            "wal_buffers": "16MB",
            "huge_pages": "try",
            "max_worker_processes": 32,
            "max_parallel_workers_per_gather": 4,
            "max_parallel_workers": 32,
            "max_parallel_maintenance_workers": 4,
        },
    ),
    (
        "dw, 256GB, 64 CPUs, PostgreSQL 17 on NVMe: 32GB of maintenance capped at 8GB",
        spec("256GB", 64, 17, "dw", "nvme"),
        {
            "shared_buffers": "64GB",
            "effective_cache_size": "192GB",
            "maintenance_work_mem": "8GB",
            "default_statistics_target": 500,
            "max_worker_processes": 64,
            "max_parallel_workers_per_gather": 32,
            "max_parallel_workers": 64,
            "max_parallel_maintenance_workers": 4,
        },
    ),
    (
        "web, 4GB, 4 CPUs, PostgreSQL 16: 1GB shared buffers, WAL buffers at their 16MB cap",
        spec("4GB", 4, 16, "web", "ssd"),
        {
            "shared_buffers": "1GB",
            "effective_cache_size": "3GB",
            "maintenance_work_mem": "256MB",
            "wal_buffers": "16MB",
            "huge_pages": "off",
        },
    ),
    (
        "mixed, 6GB, 6 CPUs, PostgreSQL 14: a size that is not a whole GB",
        spec("6GB", 6, 14, "mixed", "ssd"),
        {
            "shared_buffers": "1536MB",
            "effective_cache_size": "4608MB",
            "maintenance_work_mem": "384MB",
            "max_parallel_workers_per_gather": 3,
            "max_parallel_workers": 6,
            "max_parallel_maintenance_workers": 3,
        },
    ),
    (
        "desktop, 16GB, 8 CPUs, PostgreSQL 18 on NVMe",
        spec("16GB", 8, 18, "desktop", "nvme"),
        {
            "shared_buffers": "1GB",
            "effective_cache_size": "4GB",
            "maintenance_work_mem": "1GB",
            "wal_buffers": "16MB",
            "effective_io_concurrency": 1000,
            "max_worker_processes": 8,
        },
    ),
    (
        "oltp, 12GB, 12 CPUs, PostgreSQL 13 on SAN",
        spec("12GB", 12, 13, "oltp", "san"),
        {
            "shared_buffers": "3GB",
            "effective_cache_size": "9GB",
            "maintenance_work_mem": "768MB",
            "wal_buffers": "16MB",
            "huge_pages": "try",
            "effective_io_concurrency": 300,
            "max_worker_processes": 12,
            "max_parallel_workers_per_gather": 4,
            "max_parallel_maintenance_workers": 4,
        },
    ),
    (
        "web, 100GB, 24 CPUs, PostgreSQL 17: 6400MB of maintenance memory, under the cap",
        spec("100GB", 24, 17, "web", "ssd"),
        {"shared_buffers": "25GB", "effective_cache_size": "75GB", "maintenance_work_mem": "6400MB"},
    ),
]


@pytest.mark.parametrize(("sentence", "given", "expected"), PGTUNE_CASES, ids=[case[0] for case in PGTUNE_CASES])
def test_pg_tune_agrees_with_pgtune_where_its_model_applies(sentence, given, expected):
    settings = pg_tune(given)
    assert {name: settings[name] for name in expected} == expected, sentence


@pytest.mark.parametrize(
    ("sentence", "given", "expected"),
    [
        (
            "without a demand a web server gets PGTune's 200 connections when memory allows it",
            spec("16GB"),
            {"max_connections": 200, "superuser_reserved_connections": 3},
        ),
        (
            # 40 + 3 reserved + 10 spare (max(10, 20% of 40 = 8)) = 53, all active, plus 4 parallel workers:
            # (8176MB left - 57 processes x 2MB) / (57 x 3) = 8062MB / 171 = 48277kB;
            # PGTune: 12GB / ((200 + 4) x 3) = 20560kB.
            "a pooled demand of 40 gives max_connections 40 + 3 + 10 spare = 53, more work_mem than PGTune's 20560kB",
            spec("16GB", connection_demand=40),
            {"max_connections": 53, "work_mem": "48277kB"},
        ),
        (
            # 40 + 3 superuser + 5 reserved + 10 spare = 58.
            "reserved connections are added to the demand on 16 and later, before the spare",
            spec("16GB", version=16, connection_demand=40, reserved_connections=5),
            {"max_connections": 58, "reserved_connections": 5},
        ),
        (
            "a fixed max_connections that fits is used as given",
            spec("16GB", max_connections=150),
            {"max_connections": 150},
        ),
        (
            "a 1 CPU host gets no parallel query but keeps 8 worker slots",
            spec("4GB", cpus=1),
            {
                "max_worker_processes": 8,
                "max_parallel_workers": 1,
                "max_parallel_workers_per_gather": 0,
                "max_parallel_maintenance_workers": 0,
            },
        ),
        (
            "a 2 CPU host gets one worker per gather",
            spec("4GB", cpus=2),
            {"max_parallel_workers": 2, "max_parallel_workers_per_gather": 1, "max_parallel_maintenance_workers": 1},
        ),
        (
            "the leak guard ends sessions idle in a transaction after 10 minutes",
            spec(),
            {"idle_in_transaction_session_timeout": "10min"},
        ),
        (
            "autovacuum_work_mem stops at 1GB before 17, where VACUUM cannot use more",
            spec("64GB", version=16),
            {"maintenance_work_mem": "4GB", "autovacuum_work_mem": "1GB"},
        ),
        (
            "autovacuum_work_mem stops at PGTune's 2GB from 17",
            spec("64GB", version=17),
            {"maintenance_work_mem": "4GB", "autovacuum_work_mem": "2GB"},
        ),
        (
            # 512MB - 128MB shared_buffers - 3928kB wal_buffers - (32MB + 3 x 32MB) maintenance = 258216kB;
            # / (2MB + 6 x 1MB) = 31 processes, less 1 parallel worker (1 CPU) = 30: mixed's 100 capped at 30.
            "a 512MB host still gets a server that starts, with PostgreSQL's minimum-respecting sizes",
            spec("512MB", cpus=1, version=13, profile="mixed"),
            {"shared_buffers": "128MB", "maintenance_work_mem": "32MB", "wal_buffers": "3928kB", "max_connections": 30},
        ),
        (
            "a 1TB host gets shared_buffers of a quarter and maintenance at the cap",
            spec("1TB", cpus=64, version=16, profile="dw"),
            {"shared_buffers": "256GB", "effective_cache_size": "768GB", "maintenance_work_mem": "8GB"},
        ),
        (
            "memory_fraction and reserved_memory shrink the memory PostgreSQL sizes from",
            spec("16GB", memory_fraction=0.5, reserved_memory="512MB"),
            {"shared_buffers": "1920MB", "effective_cache_size": "5760MB", "maintenance_work_mem": "480MB"},
        ),
        (
            "memory may be given in bytes",
            spec(16 * GB),
            {"shared_buffers": "4GB"},
        ),
        (
            "a MemTotal a little under 16GB (15995MB, as a 16GB VM reports) rounds to a stable 3968MB",
            spec(15995 * MB),
            {"shared_buffers": "3968MB", "effective_cache_size": "11904MB"},
        ),
        (
            "profile and storage default to mixed and ssd",
            {"memory": "16GB", "cpus": 4, "version": 18},
            {"max_connections": 100, "random_page_cost": 1.1, "effective_io_concurrency": 200},
        ),
        (
            "overrides win and are written as given",
            spec(overrides={"random_page_cost": 1.5, "work_mem": "8MB", "jit": "off", "pg_stat_statements.max": 10000}),
            {"random_page_cost": 1.5, "work_mem": "8MB", "jit": "off", "pg_stat_statements.max": 10000},
        ),
        (
            "an old alias is pinned under the name the server uses",
            spec(overrides={"sort_mem": "8MB"}),
            {"work_mem": "8MB"},
        ),
        (
            "-1 pins autovacuum_work_mem to follow maintenance_work_mem",
            spec(overrides={"autovacuum_work_mem": -1}),
            {"autovacuum_work_mem": -1},
        ),
    ],
)
def test_pg_tune(sentence, given, expected):
    settings = pg_tune(given)
    assert {name: settings[name] for name in expected} == expected, sentence


def test_pg_tune_returns_every_contract_key_sorted_by_name():
    settings = pg_tune(spec(version=16))
    assert list(settings) == sorted(settings)
    assert set(settings) == {
        "autovacuum_work_mem",
        "checkpoint_completion_target",
        "default_statistics_target",
        "effective_cache_size",
        "effective_io_concurrency",
        "huge_pages",
        "idle_in_transaction_session_timeout",
        "maintenance_work_mem",
        "max_connections",
        "max_parallel_maintenance_workers",
        "max_parallel_workers",
        "max_parallel_workers_per_gather",
        "max_wal_size",
        "max_worker_processes",
        "min_wal_size",
        "random_page_cost",
        "reserved_connections",
        "shared_buffers",
        "superuser_reserved_connections",
        "wal_buffers",
        "work_mem",
    }


@pytest.mark.parametrize("version", [13, 14, 15])
def test_pg_tune_leaves_reserved_connections_out_before_16(version):
    assert "reserved_connections" not in pg_tune(spec(version=version))


@pytest.mark.parametrize("version", range(13, 19))
def test_pg_tune_never_writes_io_method(version):
    assert "io_method" not in pg_tune(spec(version=version))


@pytest.mark.parametrize(
    ("sentence", "given", "message"),
    [
        ("a typo in a spec key is refused", {**spec(), "memroy": "16GB"}, r"unknown key\(s\) memroy"),
        ("memory is required", {"cpus": 4, "version": 17}, r"needs the key\(s\) memory"),
        ("zero memory is refused", spec(0), r"memory must be at least 1 bytes, got 0"),
        ("negative memory is refused", spec("-1GB"), r"memory '-1GB' is not a size"),
        ("an IEC unit is refused", spec("16 GiB"), r"memory '16 GiB' is not a size: expected .*kB, MB, GB"),
        ("a lowercase unit is refused", spec("16gb"), r"memory '16gb' is not a size"),
        ("version 9 is refused", spec(version=9), r"version 9 is not a supported .* 13 to 18"),
        ("version 19 is refused", spec(version=19), r"version 19 is not a supported"),
        ("an unknown profile is refused", spec(profile="analytics"), r"profile 'analytics' is not one of web, oltp"),
        ("an unknown storage is refused", spec(storage="tape"), r"storage 'tape' is not one of ssd"),
        ("cpus must be an integer", spec(cpus=2.5), r"cpus must be an integer, got float 2.5"),
        ("True is not one CPU", spec(cpus=True), r"cpus must be an integer, got bool True"),
        ("zero CPUs are refused", spec(cpus=0), r"cpus must be at least 1, got 0"),
        ("memory_fraction above 1 is refused", spec(memory_fraction=1.5), r"memory_fraction must be .* got 1.5"),
        (
            "reserving all memory is refused",
            spec("4GB", reserved_memory="4GB"),
            r"usable memory .* must be more than 0",
        ),
        (
            "reserved_connections needs 16",
            spec(version=15, reserved_connections=2),
            r"reserved_connections 2 needs PostgreSQL 16 or later; version 15",
        ),
        (
            "a pinned shared_buffers above memory is refused",
            spec("4GB", overrides={"shared_buffers": "8GB"}),
            r"overrides.shared_buffers '8GB' is not below the usable memory of 4GB",
        ),
        (
            "an unknown parameter is refused with a suggestion",
            spec(overrides={"shared_bufers": "1GB"}),
            r"'shared_bufers', which PostgreSQL 18 does not know \(did you mean shared_buffers\?\)",
        ),
        (
            "a parameter of a later version is refused",
            spec(version=17, overrides={"io_method": "worker"}),
            r"'io_method', which PostgreSQL 17 does not know",
        ),
        (
            "a parameter removed in 17 is refused there",
            spec(version=17, overrides={"old_snapshot_threshold": -1}),
            r"'old_snapshot_threshold', which PostgreSQL 17 does not know",
        ),
        (
            "a read-only parameter is refused",
            spec(overrides={"block_size": 8192}),
            r"block_size, a read-only parameter",
        ),
        (
            "max_connections cannot hide in overrides",
            spec(overrides={"max_connections": 500}),
            r"give it as the spec key max_connections",
        ),
        (
            "a size that does not parse is refused",
            spec(overrides={"work_mem": "lots"}),
            r"overrides.work_mem 'lots' is not a size",
        ),
        (
            "a size below PostgreSQL's minimum is refused",
            spec(overrides={"work_mem": "32kB"}),
            r"overrides.work_mem '32kB' is 32 x kB, outside PostgreSQL's range 64 to",
        ),
        (
            "maintenance_work_mem below 1MB is refused on 16",
            spec(version=16, overrides={"maintenance_work_mem": "512kB"}),
            r"outside PostgreSQL's range 1024 to",
        ),
        (
            "min_wal_size above max_wal_size is refused",
            spec(overrides={"min_wal_size": "8GB"}),
            r"min_wal_size 8GB is above max_wal_size 4GB",
        ),
        (
            # 16GB web: ceiling 1631. 2003 connections need 2007 processes of 5MB = 10035MB after shared and
            # maintenance memory, M/2 - 16MB on web: M >= 20102MB (19.6GB), rounded up to 20GB.
            "a demand above the ceiling names both numbers and the memory needed",
            spec("16GB", version=17, connection_demand=2000),
            r"connection_demand 2000 .* needs max_connections 2003, above the ceiling of 1631 .* about 20GB of memory",
        ),
        (
            "a fixed max_connections above the ceiling is never capped",
            spec("16GB", version=17, max_connections=2000),
            r"max_connections 2000 \(given\) needs max_connections 2000, above the ceiling of 1631",
        ),
        (
            "a fixed max_connections below the demand is refused",
            spec(max_connections=100, connection_demand=120),
            r"max_connections 100 is below what the demand needs: connection_demand 120 .* = 123",
        ),
        (
            # 1GB web on 64 CPUs: ceiling 94 (see test_spare_connections); 85 + 3 = 88 leaves 6 slots.
            "an explicit spare_connections that does not fit is refused, not trimmed",
            spec("1GB", cpus=64, version=17, connection_demand=85, spare_connections=7),
            r"spare_connections 7 does not fit: connection_demand 85 .* = 88 leaves 6 slots under the ceiling of 94",
        ),
        (
            "active_demand above connection_demand is refused",
            spec(connection_demand=40, active_demand=41),
            r"active_demand must be at most 40, got 41",
        ),
        (
            "active_demand without connection_demand is refused",
            spec(active_demand=5),
            r"active_demand 5 is the active share of connection_demand, which is not given",
        ),
        (
            "a fixed max_connections at the reserved slots would not start",
            spec(max_connections=3),
            r"max_connections 3 must be above 3 superuser_reserved_connections",
        ),
        (
            # 32MB - 8MB shared_buffers - 240kB wal_buffers - (2MB + 3 x 2MB) maintenance = 16144kB: 3 processes
            # of 5MB, no parallel worker (1 CPU, 3 / 16 = 0), so 3 connections < 3 reserved + 1.
            "a host too small for even the reserved slots is refused",
            spec("32MB", cpus=1),
            r"memory too small: 32MB of usable memory .* only 3 connections, fewer than the 4 PostgreSQL needs",
        ),
    ],
)
def test_pg_tune_refuses(sentence, given, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pg_tune(given)


@pytest.mark.parametrize(
    ("sentence", "given", "expected"),
    [
        (
            # usable 16GB - 4GB shared_buffers - 16MB wal_buffers - (1GB + 3 x 1GB) maintenance = 8176MB;
            # 8176MB / (2MB + 3 x 1MB) = 1635 processes, less 4 parallel workers (4 CPUs, under 1635 / 16) = 1631.
            "16GB web on 17: 8176MB left for 5MB connections, less 4 parallel workers",
            spec("16GB", version=17),
            {"ceiling": 1631, "max_connections": 200, "source": "profile_default", "per_connection_memory": 5 * MB},
        ),
        (
            # mixed: 2MB + 6 x 1MB = 8MB per connection; 8176MB / 8MB = 1022, less 4 = 1018.
            "16GB mixed on 17: six work_mem allocations per connection",
            spec("16GB", version=17, profile="mixed"),
            {"ceiling": 1018, "max_connections": 100, "maintenance_memory": 4 * GB},
        ),
        (
            # 97 + 3 reserved + 20 spare (20% of 97 = 19.4, rounded up) = 120.
            "a demand gives source demand",
            spec("16GB", version=17, connection_demand=97),
            {"max_connections": 120, "spare_connections": 20, "source": "demand"},
        ),
        (
            "a fixed value gives source fixed",
            spec("16GB", version=17, max_connections=120, connection_demand=50),
            {"max_connections": 120, "source": "fixed"},
        ),
        (
            # 2GB: 2048 - 512 shared_buffers - 16 wal_buffers - (128 + 3 x 128) maintenance = 1008MB / 5MB = 201,
            # less 4 = 197, below web's 200.
            "the profile default is capped at the ceiling of a small host",
            spec("2GB", version=17),
            {"ceiling": 197, "max_connections": 197, "source": "profile_default"},
        ),
        (
            "the numbers used are returned in bytes",
            spec("16GB", version=17),
            {
                "usable_memory": 16 * GB,
                "shared_buffers": 4 * GB,
                "shared_memory": 4 * GB + 16 * MB,
                "parallel_workers": 4,
            },
        ),
        (
            # 2MB + 3 x 64MB = 194MB; 8176MB / 194MB = 42 processes, of which 42 / 16 = 2 parallel workers: 40.
            "a pinned work_mem is what each connection gets in the ceiling",
            spec("16GB", version=17, overrides={"work_mem": "64MB"}),
            {"per_connection_memory": 194 * MB, "ceiling": 40, "parallel_workers": 2},
        ),
    ],
)
def test_pg_max_connections(sentence, given, expected):
    report = pg_max_connections(given)
    assert {key: report[key] for key in expected} == expected, sentence


@pytest.mark.parametrize(
    ("sentence", "given", "words"),
    [
        (
            "a default within the ceiling says so",
            spec("16GB", version=17),
            "PGTune's default 200 for web, within the ceiling of 1631",
        ),
        (
            "a capped default says it was capped",
            spec("2GB", version=17),
            "is above the ceiling of 197 that 2GB of usable memory allows",
        ),
        (
            "a demand shows its sum with the spare",
            spec("16GB", version=17, connection_demand=97),
            "connection_demand 97 + 3 superuser_reserved_connections + 0 reserved_connections + 20 spare "
            "(default spare max(10, 20% of demand)) = 120, within the ceiling of 1631",
        ),
    ],
)
def test_pg_max_connections_reason_has_the_numbers(sentence, given, words):
    assert words in pg_max_connections(given)["reason"], sentence


def test_a_smaller_demand_gives_more_work_mem_than_the_profile_default():
    pooled = pg_tune(spec("16GB", connection_demand=40))
    default = pg_tune(spec("16GB"))
    assert pg_size_bytes(pooled["work_mem"], "kB") > 2 * pg_size_bytes(default["work_mem"], "kB")


# 1GB web on 17: 1GB - 256MB shared_buffers - 7864kB wal_buffers - (64MB + 3 x 64MB) maintenance = 516424kB;
# / 5MB = 100 processes, 100 / 16 = 6 parallel workers: ceiling 94. 64 CPUs keep the advice (520) far away.
SMALL_MANY_CPUS = {"memory": "1GB", "cpus": 64, "version": 17, "profile": "web"}


@pytest.mark.parametrize(
    ("sentence", "given", "expected"),
    [
        (
            "a demand of 40 gets the least spare, 10 (20% would be 8): 40 + 3 + 10 = 53",
            spec("16GB", version=17, connection_demand=40),
            {"spare_connections": 10, "max_connections": 53, "warnings": []},
        ),
        (
            "a demand of 300 gets 20% spare, 60: 300 + 3 + 60 = 363",
            spec("16GB", version=17, cpus=128, connection_demand=300),
            {"spare_connections": 60, "max_connections": 363, "warnings": []},
        ),
        (
            "20% is rounded up: 51 gets 11 (10.2): 51 + 3 + 11 = 65",
            spec("16GB", version=17, connection_demand=51),
            {"spare_connections": 11, "max_connections": 65},
        ),
        (
            "spare_connections replaces the default: 40 + 3 + 25 = 68",
            spec("16GB", version=17, connection_demand=40, spare_connections=25),
            {"spare_connections": 25, "max_connections": 68, "warnings": []},
        ),
        (
            "spare_connections 0 leaves exactly demand + reserved: 40 + 3 = 43",
            spec("16GB", version=17, connection_demand=40, spare_connections=0),
            {"spare_connections": 0, "max_connections": 43},
        ),
        (
            "an explicit spare that just fits under the ceiling is kept without a warning: 85 + 3 + 6 = 94",
            SMALL_MANY_CPUS | {"connection_demand": 85, "spare_connections": 6},
            {"ceiling": 94, "spare_connections": 6, "max_connections": 94, "warnings": []},
        ),
        (
            "a profile default has no spare",
            spec("16GB", version=17),
            {"spare_connections": None, "max_connections": 200},
        ),
    ],
)
def test_spare_connections(sentence, given, expected):
    report = pg_max_connections(given)
    assert {key: report[key] for key in expected} == expected, sentence


def test_the_default_spare_is_trimmed_to_the_ceiling_with_a_warning():
    # 85 + 3 = 88 fits the ceiling of 94; the default spare would be 17 (20% of 85), only 6 fit.
    report = pg_max_connections(SMALL_MANY_CPUS | {"connection_demand": 85})
    assert (report["ceiling"], report["advice"]) == (94, 2 * (4 * 64 + 4))
    assert (report["max_connections"], report["spare_connections"], report["source"]) == (94, 6, "demand")
    (warning,) = report["warnings"]
    assert warning.startswith(
        "only 6 spare slots fit above connection_demand 85 + 3 superuser_reserved_connections + 0 "
        "reserved_connections = 88 under the ceiling of 94, fewer than the 17 of the default spare"
    )
    assert pg_tune(SMALL_MANY_CPUS | {"connection_demand": 85})["max_connections"] == 94


def test_a_fixed_max_connections_above_the_advice_is_kept_with_a_warning():
    # 4 CPUs: advice 2 x (4 x 4 + 4) = 40; 500 is far under the ceiling of 1631, so it is honoured.
    given = spec("16GB", version=17, max_connections=500)
    report = pg_max_connections(given)
    assert (report["max_connections"], report["source"]) == (500, "fixed")
    assert (report["advice"], report["ceiling"]) == (40, 1631)
    (warning,) = report["warnings"]
    assert warning.startswith("500 connections may run queries at once, more than the 40 that 4 CPU(s) serve well")
    assert "twice the 20 that run best" in warning and "PgBouncer" in warning
    assert pg_tune(given)["max_connections"] == 500


def test_a_demand_within_the_advice_has_no_warning_and_one_above_it_has():
    # 4 CPUs: advice 40. The warning counts the demand, not the spare or reserved slots.
    assert pg_max_connections(spec("16GB", version=17, connection_demand=40))["warnings"] == []
    (warning,) = pg_max_connections(spec("16GB", version=17, connection_demand=41))["warnings"]
    assert warning.startswith("41 connections may run queries at once, more than the 40")


def test_active_demand_lowers_the_active_connections_and_raises_work_mem():
    # 200 + 3 + 40 spare = 243 connections; 180 of the demand are idle, so 243 - 180 = 63 are active.
    # 16GB web on 18: 8176MB - (243 + 4 workers) x 2MB = 7682MB left for work_mem;
    # all active: 7682MB / ((243 + 4) x 3) = 10615kB; 63 active: 7682MB / ((63 + 4) x 3) = 39136kB.
    everyone = spec("16GB", connection_demand=200)
    mostly_idle = spec("16GB", connection_demand=200, active_demand=20)
    assert pg_max_connections(everyone)["active_connections"] == 243
    report = pg_max_connections(mostly_idle)
    assert (report["max_connections"], report["active_connections"]) == (243, 63)
    assert pg_tune(everyone)["work_mem"] == "10615kB"
    assert pg_tune(mostly_idle)["work_mem"] == "39136kB"
    # The advice (40 on 4 CPUs) is about what runs at once: 200 warns, 20 active do not.
    assert pg_max_connections(everyone)["warnings"] and report["warnings"] == []


def test_a_large_host_with_a_tiny_demand_gets_work_mem_capped_at_256mb():
    # 256GB web: 1 + 3 + 10 = 14 connections would each get about 2GB per allocation; the cap is 256MB.
    settings = pg_tune(spec("256GB", cpus=16, version=17, connection_demand=1))
    assert settings["max_connections"] == 14
    assert settings["work_mem"] == "256MB"


def test_a_small_host_with_many_cpus_is_tuned_with_fewer_parallel_workers():
    # 2GB dw on 17: 2048 - 512 shared_buffers - 16 wal_buffers - (256 + 3 x 256) maintenance = 496MB;
    # / (2MB + 6 x 1MB) = 62 processes; 62 / 16 = 3 parallel workers, not 64: ceiling 59, dw's 40 fit.
    # work_mem: (496MB - 43 x 2MB) / (43 x 6) = 1627kB.
    given = {"memory": "2GB", "cpus": 64, "version": 17, "profile": "dw"}
    settings = pg_tune(given)
    assert pg_max_connections(given)["ceiling"] == 59
    assert {
        name: settings[name]
        for name in (
            "max_connections",
            "max_parallel_workers",
            "max_worker_processes",
            "max_parallel_workers_per_gather",
            "max_parallel_maintenance_workers",
            "work_mem",
        )
    } == {
        "max_connections": 40,
        "max_parallel_workers": 3,
        "max_worker_processes": 8,
        "max_parallel_workers_per_gather": 2,
        "max_parallel_maintenance_workers": 2,
        "work_mem": "1627kB",
    }


def test_connection_memory_for_a_large_schema_lowers_the_ceiling():
    # 20MB + 3 x 1MB = 23MB per connection: 8176MB / 23MB = 355 processes, less 4 workers = 351.
    report = pg_max_connections(spec("16GB", version=17, connection_memory="20MB"))
    assert (report["connection_memory"], report["per_connection_memory"], report["ceiling"]) == (20 * MB, 23 * MB, 351)


UNLIMITED_V1 = "9223372036854771712"


@pytest.mark.parametrize(
    ("sentence", "facts", "expected"),
    [
        (
            "no cgroup limits leave the host's memory and CPUs",
            {"memory": "24GB", "cpus": 8},
            {"memory": 24 * GB, "cpus": 8, "memory_limited_by": "host", "cpus_limited_by": "host"},
        ),
        (
            "cgroup v1's unlimited value is no limit",
            {"memory": 24 * GB, "cpus": 2, "cgroup_memory_limits": [UNLIMITED_V1], "cgroup_cpu_limits": ["-1 100000"]},
            {"memory": 24 * GB, "cpus": 2, "memory_limited_by": "host", "cpus_limited_by": "host"},
        ),
        (
            "cgroup v2's max is no limit",
            {"memory": 24 * GB, "cpus": 2, "cgroup_memory_limits": ["max"], "cgroup_cpu_limits": ["max 100000"]},
            {"memory": 24 * GB, "memory_limited_by": "host", "cgroup_memory_limit": None, "cgroup_cpu_limit": None},
        ),
        (
            "a 2GB limit on a parent cgroup wins over the unlimited own cgroup",
            {"memory": 24 * GB, "cpus": 2, "cgroup_memory_limits": ["max", str(2 * GB), UNLIMITED_V1]},
            {"memory": 2 * GB, "memory_limited_by": "cgroup", "cgroup_memory_limit": 2 * GB},
        ),
        (
            "of nested limits the smaller wins",
            {"memory": 24 * GB, "cpus": 8, "cgroup_memory_limits": [str(4 * GB), str(3 * GB), str(8 * GB)]},
            {"memory": 3 * GB, "memory_limited_by": "cgroup"},
        ),
        (
            "a limit above physical memory is no limit",
            {"memory": 8 * GB, "cpus": 2, "cgroup_memory_limits": [str(16 * GB)]},
            {"memory": 8 * GB, "memory_limited_by": "host", "cgroup_memory_limit": 16 * GB},
        ),
        (
            "a quota of 150000 per 100000 rounds up to 2 CPUs",
            {"memory": 8 * GB, "cpus": 8, "cgroup_cpu_limits": ["150000 100000"]},
            {"cpus": 2, "cpus_limited_by": "cgroup", "cgroup_cpu_limit": 2},
        ),
        (
            "a quota below one CPU still gives one",
            {"memory": 8 * GB, "cpus": 8, "cgroup_cpu_limits": ["20000 100000"]},
            {"cpus": 1, "cpus_limited_by": "cgroup"},
        ),
        (
            "a quota above the physical CPUs does not add CPUs",
            {"memory": 8 * GB, "cpus": 2, "cgroup_cpu_limits": ["800000 100000"]},
            {"cpus": 2, "cpus_limited_by": "host"},
        ),
        (
            "of nested quotas the smaller wins",
            {"memory": 8 * GB, "cpus": 16, "cgroup_cpu_limits": ["max 100000", "400000 100000", "200000 100000"]},
            {"cpus": 2},
        ),
        (
            "an empty value (controller not enabled) is no limit",
            {"memory": 8 * GB, "cpus": 4, "cgroup_memory_limits": [""], "cgroup_cpu_limits": [""]},
            {"memory": 8 * GB, "cpus": 4},
        ),
        (
            "Ansible's memtotal_mb and processor_vcpus are accepted",
            {"ansible_memtotal_mb": 16000, "ansible_processor_vcpus": 4},
            {"memory": 16000 * MB, "cpus": 4, "physical_memory": 16000 * MB, "physical_cpus": 4},
        ),
        (
            "a whole ansible_facts can be passed: other keys are ignored, nproc comes before vcpus",
            {"memtotal_mb": 2048, "processor_nproc": 2, "processor_vcpus": 8, "distribution": "Debian"},
            {"memory": 2 * GB, "cpus": 2},
        ),
        (
            "memory wins over memtotal_mb when both are given",
            {"memory": 4 * GB, "memtotal_mb": 8192, "cpus": 1},
            {"memory": 4 * GB},
        ),
    ],
)
def test_effective_resources(sentence, facts, expected):
    resources = effective_resources(facts)
    assert {key: resources[key] for key in expected} == expected, sentence


@pytest.mark.parametrize(
    ("sentence", "facts", "message"),
    [
        (
            "a malformed memory limit is named",
            {"memory": GB, "cpus": 1, "cgroup_memory_limits": ["2G"]},
            r"cgroup memory limit '2G' is not a limit",
        ),
        (
            "a zero memory limit is not a limit",
            {"memory": GB, "cpus": 1, "cgroup_memory_limits": ["0"]},
            r"cgroup memory limit '0'",
        ),
        (
            "a quota without period is refused",
            {"memory": GB, "cpus": 1, "cgroup_cpu_limits": ["150000"]},
            r"cgroup CPU limit '150000' is not a quota",
        ),
        (
            "a zero period is refused",
            {"memory": GB, "cpus": 1, "cgroup_cpu_limits": ["150000 0"]},
            r"cgroup CPU limit '150000 0'",
        ),
        ("text is refused", {"memory": GB, "cpus": 1, "cgroup_cpu_limits": ["lots"]}, r"cgroup CPU limit 'lots'"),
        (
            "a misspelt cgroup key is refused",
            {"memory": GB, "cpus": 1, "cgroup_memory_limit": ["max"]},
            r"unknown key\(s\) cgroup_memory_limit",
        ),
        ("memory is needed", {"cpus": 1}, r"needs one of the keys memory, memtotal_mb"),
        ("cpus are needed", {"memory": GB}, r"needs one of the keys cpus, processor_nproc"),
        ("CPUs must be an integer", {"memory": GB, "cpus": "two"}, r"cpus must be an integer, got str 'two'"),
        ("memory must be a size", {"memory": "lots", "cpus": 1}, r"memory 'lots' is not a size"),
    ],
)
def test_effective_resources_refuses(sentence, facts, message):
    with pytest.raises(AnsibleFilterError, match=message):
        effective_resources(facts)


@pytest.mark.parametrize(
    ("sentence", "value", "unit", "expected"),
    [
        ("16GB is 16 x 1024^3 bytes", "16GB", "B", 16 * GB),
        ("a whole number of bytes is itself", 1536, "B", 1536),
        ("1.5GB is 1536MB", "1.5GB", "B", 1536 * MB),
        ("a space between number and unit is allowed, as the server allows it", "16 GB", "B", 16 * GB),
        ("bytes are a unit", "2048B", "B", 2048),
        ("terabytes are a unit", "2TB", "B", 2 * 1024 * GB),
        ("an exponent is read as the server reads it", "1e3MB", "8kB", 1000 * MB),
        ("a unitless shared_buffers counts 8kB blocks", 16384, "8kB", 128 * MB),
        ("a unitless string counts in the unit too", "524288", "8kB", 4 * GB),
        ("4096MB is the same shared_buffers as 4GB", "4096MB", "8kB", 4 * GB),
        ("a unitless work_mem counts kB", "4096", "kB", 4 * MB),
        ("a unitless max_wal_size counts MB", "1024", "MB", GB),
        ("30.1GB of shared_buffers is 3945216 blocks, as postgres -C shows", "30.1GB", "8kB", 3945216 * 8 * KB),
        ("3932kB of wal_buffers rounds to 492 blocks, as postgres -C shows", "3932kB", "8kB", 492 * 8 * KB),
        ("1000B in a kB setting rounds to 1kB", "1000B", "kB", KB),
        ("2047.6kB in a kB setting rounds to 2048kB, as postgres -C shows", " 2047.6 kB", "kB", 2048 * KB),
        ("a unitless half block rounds half to even", "1000.5", "8kB", 1000 * 8 * KB),
        ("zero is a size", "0", "kB", 0),
    ],
)
def test_pg_size_bytes(sentence, value, unit, expected):
    assert pg_size_bytes(value, unit) == expected, sentence


@pytest.mark.parametrize(
    ("sentence", "value", "unit", "message"),
    [
        (
            "an IEC unit names the value and the allowed forms",
            "16 GiB",
            "B",
            r"value '16 GiB' is not a size: expected .* B, kB, MB, GB, TB",
        ),
        ("units are case-sensitive", "16gb", "B", r"value '16gb' is not a size"),
        ("a negative size is refused", "-1GB", "B", r"value '-1GB' is not a size"),
        ("text is refused", "lots", "B", r"value 'lots' is not a size"),
        ("a boolean is refused", True, "B", r"value True is not a size"),
        ("None is refused", None, "B", r"value None is not a size"),
        ("the hint names the base unit", "lots", "8kB", r"a number without unit counts in 8kB"),
        ("an unknown base unit is refused", "1GB", "kb", r"unit 'kb' is not a memory unit"),
    ],
)
def test_pg_size_bytes_refuses(sentence, value, unit, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pg_size_bytes(value, unit)


@pytest.mark.parametrize(
    ("sentence", "value", "expected"),
    [
        ("4GB of bytes is 4GB", 4 * GB, "4GB"),
        ("1.5GB is written in MB", 1536 * MB, "1536MB"),
        ("16kB stays kB", 16 * KB, "16kB"),
        ("7864kB is not a whole MB", 7864 * KB, "7864kB"),
        ("a TB is a unit", 2 * 1024 * GB, "2TB"),
        ("zero is 0", 0, "0"),
        ("a size string is normalized", "4096MB", "4GB"),
        ("a fractional size string is normalized", "1.5GB", "1536MB"),
    ],
)
def test_pg_size_pretty(sentence, value, expected):
    assert pg_size_pretty(value) == expected, sentence


@pytest.mark.parametrize(
    ("sentence", "value", "message"),
    [
        (
            "bytes that are not a whole kB are refused, not rounded",
            1000,
            r"value 1000 bytes is not a whole number of kB",
        ),
        ("a negative size is refused", -1024, r"value -1024 is negative"),
        ("a boolean is refused", True, r"value True is not a whole number of bytes"),
        ("a float is refused", 1.5, r"value 1.5 is not a whole number of bytes"),
        ("a bad string is refused", "16 GiB", r"value '16 GiB' is not a size"),
    ],
)
def test_pg_size_pretty_refuses(sentence, value, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pg_size_pretty(value)


def test_spare_connections_without_a_demand_does_not_apply():
    # A standby raised to its primary's max_connections by parity has no demand of its own.
    report = pg_max_connections(
        {"memory": "4GB", "cpus": 2, "version": 15, "max_connections": 50, "spare_connections": 5}
    )
    assert (report["source"], report["max_connections"], report["spare_connections"]) == ("fixed", 50, None)


def test_the_advice_counts_the_declared_load():
    # 2 CPUs: advice 2 x (4 x 2 + 4) = 24. 500 given alone is the load; with a demand of 20
    # (a standby raised to its primary's 500 by parity) the load is the demand.
    alone = pg_max_connections({"memory": "16GB", "cpus": 2, "version": 15, "max_connections": 500})
    assert any(warning.startswith("500 connections may run queries at once") for warning in alone["warnings"])
    raised = pg_max_connections(
        {"memory": "16GB", "cpus": 2, "version": 15, "max_connections": 500, "connection_demand": 20}
    )
    assert raised["max_connections"] == 500
    assert not any("may run queries at once" in warning for warning in raised["warnings"])
