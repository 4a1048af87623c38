"""Filters that size PostgreSQL for a host: pg_tune, pg_max_connections, effective_resources,
pg_size_bytes and pg_size_pretty.

The model (formulas, constants and where they come from) lives in
``plugins/plugin_utils/pg_sizing.py``; size arithmetic in ``pg_units.py``.
"""

import math

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_inputs import as_int, as_size, check_mapping
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_sizing import max_connections_report, tune
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_units import MB, format_size, parse_size

#: A cgroup limit at or above this is "no limit": cgroup v1 reports 9223372036854771712
#: (PAGE_COUNTER_MAX pages, about 8 EiB) for an unlimited group.
CGROUP_UNLIMITED_FROM = 2**60

#: Keys that name the same fact, most explicit first: the filter's own key, then Ansible's
#: fact names (``ansible_facts`` keys and their ``ansible_`` variables). processor_nproc
#: honours CPU affinity (cpusets), so it comes before processor_vcpus.
MEMORY_KEYS = ("memory", "memtotal_mb", "ansible_memtotal_mb")
CPU_KEYS = ("cpus", "processor_nproc", "ansible_processor_nproc", "processor_vcpus", "ansible_processor_vcpus")
CGROUP_KEYS = ("cgroup_memory_limits", "cgroup_cpu_limits")


def pg_tune(spec):
    """PostgreSQL settings for a host, as a mapping of parameter name to postgresql.conf value.

    See ``pg_tune.yml`` for the spec keys and ``plugin_utils/pg_sizing.py`` for the model.
    """
    return tune(spec)


def pg_max_connections(spec):
    """How many connections a host's memory allows, what max_connections pg_tune uses and why."""
    return max_connections_report(spec)


def pg_size_bytes(value, unit="B"):
    """Bytes of a PostgreSQL size such as '4GB', read as a setting whose pg_settings unit is ``unit``.

    ``pg_size_bytes('4096MB', '8kB') == pg_size_bytes(524288, '8kB') == pg_size_bytes('4GB')``.
    """
    return parse_size(value, unit, what="value")


def pg_size_pretty(value):
    """Bytes (or a size string) in the largest unit that divides them exactly: 4294967296 -> '4GB'."""
    if isinstance(value, str):
        value = parse_size(value, "B", what="value")
    return format_size(value, what="value")


def _first(facts, keys):
    for key in keys:
        if facts.get(key) is not None:
            return key, facts[key]
    raise AnsibleFilterError(f"effective_resources needs one of the keys {', '.join(keys)}")


def _limit_list(facts, key):
    limits = facts.get(key) or []
    if isinstance(limits, (str, int)) and not isinstance(limits, bool):
        limits = [limits]
    if not isinstance(limits, (list, tuple)):
        raise AnsibleFilterError(f"{key} must be a list of the raw contents of each cgroup level, got {limits!r}")
    return limits


def _memory_limit(raw):
    """Bytes of one cgroup memory limit (v2 memory.max, v1 memory.limit_in_bytes), or None for no limit."""
    text = str(raw).strip() if not isinstance(raw, bool) else None
    if text in ("", "max", "-1"):
        return None
    if text is None or not text.isdigit() or int(text) == 0:
        raise AnsibleFilterError(
            f"cgroup memory limit {raw!r} is not a limit: expected a positive number of bytes, "
            "'max', '-1' or '' (no limit)"
        )
    limit = int(text)
    return None if limit >= CGROUP_UNLIMITED_FROM else limit


def _cpu_limit(raw):
    """CPUs one cgroup CPU quota allows ('150000 100000' -> 2), or None for no quota.

    Accepts v2 ``cpu.max`` content ("max 100000", "150000 100000") and v1 as
    "QUOTA PERIOD" from cpu.cfs_quota_us and cpu.cfs_period_us ("-1 100000").
    """
    fields = raw.split() if isinstance(raw, str) else None
    unlimited = fields is not None and (
        not fields or (fields[0] in ("max", "-1") and len(fields) <= 2 and all(f.isdigit() for f in fields[1:]))
    )
    if unlimited:
        return None
    if fields is None or len(fields) != 2 or not all(field.isdigit() and int(field) > 0 for field in fields):
        raise AnsibleFilterError(
            f"cgroup CPU limit {raw!r} is not a quota: expected 'QUOTA PERIOD' in microseconds "
            "such as '150000 100000', or 'max 100000' / '-1 100000' / '' (no quota)"
        )
    quota, period = (int(field) for field in fields)
    return math.ceil(quota / period)


def effective_resources(facts):
    """The memory and CPUs a process really has: the host's, lowered by every cgroup limit above it.

    Input keys: memory (bytes or size string; or memtotal_mb / ansible_memtotal_mb in MB),
    cpus (or processor_nproc / processor_vcpus, with or without ``ansible_``),
    cgroup_memory_limits and cgroup_cpu_limits (lists of raw file contents, one per level
    from the process's cgroup up to the root). Other keys are ignored so that a whole
    ``ansible_facts`` can be passed; a misspelt ``cgroup_*`` key is an error, since it
    would silently drop a limit.
    """
    check_mapping(facts, "effective_resources input")
    typos = sorted(str(key) for key in facts if str(key).startswith("cgroup") and key not in CGROUP_KEYS)
    if typos:
        raise AnsibleFilterError(
            f"effective_resources input has unknown key(s) {', '.join(typos)}; the cgroup keys are "
            f"{', '.join(CGROUP_KEYS)}"
        )
    memory_key, memory_value = _first(facts, MEMORY_KEYS)
    if memory_key == "memory":
        physical_memory = as_size(memory_value, "memory", minimum=1)
    else:
        physical_memory = as_int(memory_value, memory_key, minimum=1) * MB
    cpu_key, cpu_value = _first(facts, CPU_KEYS)
    physical_cpus = as_int(cpu_value, cpu_key, minimum=1)

    memory_limits = [limit for limit in map(_memory_limit, _limit_list(facts, "cgroup_memory_limits")) if limit]
    cpu_limits = [limit for limit in map(_cpu_limit, _limit_list(facts, "cgroup_cpu_limits")) if limit]
    cgroup_memory = min(memory_limits) if memory_limits else None
    cgroup_cpus = min(cpu_limits) if cpu_limits else None
    memory_limited = cgroup_memory is not None and cgroup_memory < physical_memory
    cpus_limited = cgroup_cpus is not None and cgroup_cpus < physical_cpus
    return {
        "memory": cgroup_memory if memory_limited else physical_memory,
        "cpus": max(1, cgroup_cpus) if cpus_limited else physical_cpus,
        "memory_limited_by": "cgroup" if memory_limited else "host",
        "cpus_limited_by": "cgroup" if cpus_limited else "host",
        "physical_memory": physical_memory,
        "physical_cpus": physical_cpus,
        "cgroup_memory_limit": cgroup_memory,
        "cgroup_cpu_limit": cgroup_cpus,
    }


class FilterModule:
    """PostgreSQL sizing filters."""

    def filters(self):
        return {
            "pg_tune": pg_tune,
            "pg_max_connections": pg_max_connections,
            "pg_size_bytes": pg_size_bytes,
            "pg_size_pretty": pg_size_pretty,
            "effective_resources": effective_resources,
        }
