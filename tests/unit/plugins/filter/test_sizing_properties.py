"""Properties of the sizing engine that must hold for every input, checked with hypothesis."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.connection_budget import pg_connection_budget
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_sizing import pgbouncer_tune
from ansible_collections.headroom.pg.plugins.filter.postgresql_sizing import (
    effective_resources,
    pg_max_connections,
    pg_size_bytes,
    pg_size_pretty,
    pg_tune,
)
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_parameters import known_parameters, memory_range
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_sizing import (
    RDS_BYTES_PER_CONNECTION,
    SPARE_MIN,
    WORK_MEM_FLOOR,
    worst_case_memory,
)
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_units import unit_bytes
from hypothesis import given, settings
from hypothesis import strategies as st

MB = 1024**2
KB = 1024

# Derandomized so that CI runs the same examples every time.
settings.register_profile("sizing", max_examples=150, deadline=None, derandomize=True, database=None)
settings.load_profile("sizing")

memory_mb = st.integers(min_value=256, max_value=1024 * 1024)  # 256MB to 1TB
base_spec = st.fixed_dictionaries(
    {
        "cpus": st.integers(min_value=1, max_value=128),
        "version": st.integers(min_value=13, max_value=18),
        "profile": st.sampled_from(["web", "oltp", "dw", "mixed", "desktop"]),
        "storage": st.sampled_from(["ssd", "hdd", "nvme", "san"]),
    },
    optional={
        "connection_demand": st.integers(min_value=0, max_value=400),
        "memory_fraction": st.floats(min_value=0.2, max_value=1.0),
        "reserved_memory": st.integers(min_value=0, max_value=256).map(lambda mb: mb * MB),
        "superuser_reserved_connections": st.integers(min_value=0, max_value=10),
    },
)


def tune_or_none(spec):
    """pg_tune's result, or None when it refuses for a reason the spec makes legitimate."""
    try:
        return pg_tune(spec)
    except AnsibleFilterError as err:
        assert any(words in str(err) for words in ("ceiling", "memory too small", "usable memory")), err
        return None


@given(memory_mb, base_spec, st.floats(min_value=0, max_value=1))
def test_the_memory_bound_always_holds(memory, spec, active_share):
    spec = {**spec, "memory": memory * MB}
    if "connection_demand" in spec:
        spec["active_demand"] = int(spec["connection_demand"] * active_share)
    result = tune_or_none(spec)
    if result is not None:
        report = pg_max_connections(spec)
        active = report["active_connections"]
        assert active <= result["max_connections"]
        assert worst_case_memory(result, spec["profile"], active) <= report["usable_memory"]


@given(st.integers(min_value=512, max_value=1024 * 1024), base_spec)
def test_every_host_from_512mb_up_gets_a_configuration(memory, spec):
    spec = {key: value for key, value in spec.items() if key not in ("connection_demand", "memory_fraction", "reserved_memory")}
    result = pg_tune({**spec, "memory": memory * MB})
    assert result["max_connections"] > result["superuser_reserved_connections"]


@given(memory_mb, base_spec)
def test_a_demand_that_fits_keeps_spare_slots(memory, spec):
    spec = {**spec, "memory": memory * MB}
    if "connection_demand" not in spec or tune_or_none(spec) is None:
        return
    report = pg_max_connections(spec)
    reserved = report["superuser_reserved_connections"] + report["reserved_connections"]
    required = max(spec["connection_demand"] + reserved, reserved + 1)
    wanted = max(SPARE_MIN, -(-spec["connection_demand"] // 5))
    assert report["spare_connections"] == min(wanted, report["ceiling"] - required)
    assert report["max_connections"] == required + report["spare_connections"] <= report["ceiling"]


@pytest.mark.parametrize("gigabytes", [1, 2, 4, 8, 16, 32, 64])
@pytest.mark.parametrize("profile", ["web", "oltp"])
@pytest.mark.parametrize("cpus", [1, 2, 8, 64])
def test_the_ceiling_is_at_least_four_fifths_of_rds(gigabytes, profile, cpus):
    memory = gigabytes * 1024 * MB
    report = pg_max_connections({"memory": memory, "cpus": cpus, "version": 17, "profile": profile})
    assert report["ceiling"] >= 0.8 * memory / RDS_BYTES_PER_CONNECTION


@given(memory_mb, memory_mb, base_spec)
def test_settings_never_decrease_when_memory_grows(first, second, spec):
    spec = {key: value for key, value in spec.items() if key != "connection_demand"}
    smaller, larger = sorted((first, second))
    low = tune_or_none({**spec, "memory": smaller * MB})
    if low is None:
        return
    high = pg_tune({**spec, "memory": larger * MB})
    for name, unit in (("shared_buffers", "8kB"), ("effective_cache_size", "8kB"), ("maintenance_work_mem", "kB")):
        assert pg_size_bytes(low[name], unit) <= pg_size_bytes(high[name], unit), name
    assert low["max_connections"] <= high["max_connections"]
    low_ceiling = pg_max_connections({**spec, "memory": smaller * MB})["ceiling"]
    assert low_ceiling <= pg_max_connections({**spec, "memory": larger * MB})["ceiling"]


@given(memory_mb, base_spec)
def test_every_value_is_one_the_server_accepts(memory, spec):
    result = tune_or_none({**spec, "memory": memory * MB})
    if result is None:
        return
    assert set(result) <= known_parameters(spec["version"])
    for name, value in result.items():
        size_range = memory_range(name, spec["version"])
        if size_range:
            unit, low, high = size_range
            assert isinstance(value, str), name
            base_units = pg_size_bytes(value, unit) // unit_bytes(unit)
            assert low <= base_units <= high, (name, value)
            assert pg_size_bytes(value, unit) == pg_size_bytes(value), f"{name} {value} is not a whole {unit}"
    reserved = result["superuser_reserved_connections"] + result.get("reserved_connections", 0)
    assert reserved < result["max_connections"] <= 262143
    assert 0 <= result["effective_io_concurrency"] <= 1000
    assert WORK_MEM_FLOOR <= pg_size_bytes(result["work_mem"], "kB") <= 256 * MB
    assert pg_size_bytes(result["min_wal_size"], "MB") <= pg_size_bytes(result["max_wal_size"], "MB")
    assert result["max_parallel_workers_per_gather"] <= result["max_parallel_workers"] <= result["max_worker_processes"]


@given(memory_mb, base_spec)
def test_pg_tune_is_deterministic_and_sorted(memory, spec):
    spec = {**spec, "memory": memory * MB}
    first = tune_or_none(spec)
    assert first == tune_or_none(spec)
    if first is not None:
        assert list(first) == sorted(first)


@given(st.integers(min_value=0, max_value=2**42))
def test_pg_size_pretty_and_pg_size_bytes_round_trip(kilobytes):
    assert pg_size_bytes(pg_size_pretty(kilobytes * KB)) == kilobytes * KB


@given(
    st.integers(min_value=1, max_value=2**40),
    st.integers(min_value=1, max_value=256),
    st.lists(st.one_of(st.just("max"), st.integers(min_value=1, max_value=2**62).map(str)), max_size=5),
    st.lists(
        st.one_of(
            st.just("max 100000"),
            st.tuples(st.integers(min_value=1000, max_value=10**7), st.integers(min_value=1000, max_value=10**6)).map(
                lambda pair: f"{pair[0]} {pair[1]}"
            ),
        ),
        max_size=5,
    ),
)
def test_effective_resources_never_exceed_the_host_or_any_limit(memory, cpus, memory_limits, cpu_limits):
    resources = effective_resources(
        {"memory": memory, "cpus": cpus, "cgroup_memory_limits": memory_limits, "cgroup_cpu_limits": cpu_limits}
    )
    assert 1 <= resources["memory"] <= memory
    assert all(resources["memory"] <= int(limit) for limit in memory_limits if limit != "max" and int(limit) < 2**60)
    assert 1 <= resources["cpus"] <= cpus


pools = st.lists(
    st.fixed_dictionaries(
        {"users": st.integers(min_value=1, max_value=5), "target": st.sampled_from(["db1", "db2"])},
        optional={
            "pool_size": st.integers(min_value=1, max_value=10),
            "max_db_connections": st.integers(min_value=1, max_value=30),
        },
    ),
    min_size=1,
    max_size=4,
)


@given(
    pools,
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=400),
    st.integers(min_value=1, max_value=32),
)
def test_pgbouncer_stays_within_its_allowance_and_the_budget_counts_it_exactly(
    databases, processes, allowance, server_cpus
):
    databases = [{"name": f"db{index}", **entry} for index, entry in enumerate(databases)]
    spec = {
        "cpus": 4,
        "processes": processes,
        "server_cpus": server_cpus,
        "server_connection_allowance": allowance,
        "databases": databases,
    }
    try:
        sized = pgbouncer_tune(spec)
    except AnsibleFilterError as err:
        assert "server_connection_allowance" in str(err)
        return
    assert sized["server_connections"] <= allowance
    budget = pg_connection_budget({"db1": {"ceiling": 10**6}, "db2": {"ceiling": 10**6}}, [sized | {"host": "p"}])
    assert budget["db1"]["demand"] + budget["db2"]["demand"] == sized["server_connections"]


@pytest.mark.parametrize("version", range(13, 19))
def test_the_largest_host_stays_within_every_range(version):
    result = pg_tune({"memory": "1TB", "cpus": 256, "version": version, "profile": "dw", "connection_demand": 1})
    work_mem = pg_size_bytes(result["work_mem"], "kB")
    assert work_mem <= memory_range("work_mem", version)[2] * KB
