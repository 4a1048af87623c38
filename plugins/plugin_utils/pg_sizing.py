"""PostgreSQL's memory and connection sizing: the model behind pg_tune and pg_max_connections.

One memory bound holds for every result::

    shared_buffers + wal_buffers
      + (max_connections + max_parallel_workers) x (CONNECTION_OVERHEAD + allocations x work_mem)
      + maintenance_work_mem + autovacuum_max_workers x autovacuum_work_mem
    <= usable memory = memory x memory_fraction - reserved_memory

``allocations`` is how many work_mem-sized sort or hash areas one connection may
hold at once in the worst case (PGTune's divisor of 3, times its profile factor).
The *ceiling* is the most connections for which that bound still holds with each
connection given at least CEILING_WORK_MEM; max_connections never goes above it.

Shared buffers, effective_cache_size, maintenance_work_mem, wal_buffers, WAL sizes,
planner costs and parallel workers follow PGTune (le0pard/pgtune,
src/features/configuration/configurationSlice.js, 2025 version), applied to usable
memory instead of the host's RAM. Where headroom differs from PGTune, and why:

* max_connections comes from the real connection demand (pooler pools plus direct
  clients) when it is known, and is checked against the memory ceiling instead of
  being a free input. work_mem then divides memory among the connections that can
  really exist, so it is often larger than PGTune's for the same host.
* work_mem also leaves room for maintenance memory, per-connection overhead and
  wal_buffers, which PGTune leaves out; with a profile's default connection count
  it is therefore smaller than PGTune's.
* autovacuum_work_mem is always set, capped at 1GB before PostgreSQL 17 (VACUUM
  cannot use more for dead tuples there) and at 2GB from 17 (PGTune's cap).
* max_worker_processes never goes below PostgreSQL's default of 8 (logical
  replication and extensions take those slots; PGTune sets it to the CPU count).
  With fewer than 4 CPUs, where PGTune leaves parallel settings alone, they follow
  the same rule (1 CPU: no parallel query).
* Usable memory is rounded down to a power-of-two step of at most 1/64 of it, so a
  MemTotal that drifts by a few MB between boots does not change restart-only settings.
"""

import difflib
import math
import re
from collections import namedtuple
from fractions import Fraction

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_inputs import (
    as_choice,
    as_fraction,
    as_int,
    as_size,
    check_keys,
    check_mapping,
)
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_parameters import (
    READ_ONLY,
    canonical_name,
    check_version,
    known_parameters,
    memory_range,
    version_value,
)
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_units import (
    BLOCK,
    GB,
    KB,
    MB,
    describe_size,
    floor_to,
    format_size,
    parse_size,
    unit_bytes,
)

#: Private memory of one backend that work_mem does not cover: process baseline (~2MB,
#: Andres Freund's 2020 measurements), catalog, relation and plan caches that grow to
#: several MB on large schemas, and page-table entries for shared_buffers without huge
#: pages. For comparison, Amazon RDS budgets 9531392 bytes (~9.1MB) per connection in
#: its default max_connections, Spilo 30MB including work_mem.
CONNECTION_OVERHEAD = 10 * MB

#: The least work_mem the ceiling grants each connection: PostgreSQL's default and
#: PGTune's floor. Beyond the ceiling, queries would get less than out of the box.
CEILING_WORK_MEM = 4 * MB

#: PostgreSQL's minimum work_mem.
WORK_MEM_MIN = 64 * KB

#: PGTune's cap on maintenance_work_mem on Linux.
MAINTENANCE_WORK_MEM_CAP = 8 * GB

#: PostgreSQL's minimum maintenance_work_mem on 13 to 16 (17 accepts 64kB); also our floor.
MAINTENANCE_WORK_MEM_MIN = 1 * MB

#: PostgreSQL's default autovacuum_max_workers (13 to 18).
AUTOVACUUM_MAX_WORKERS = 3

#: PostgreSQL's minimum shared_buffers (16 blocks).
SHARED_BUFFERS_MIN = 128 * KB

#: PGTune's wal_buffers rule: 3% of shared_buffers, 14MB to 16MB rounded up to 16MB, at least 32kB.
WAL_BUFFERS_MAX = 16 * MB
WAL_BUFFERS_ROUND_UP_FROM = 14 * MB
WAL_BUFFERS_MIN = 32 * KB

#: PGTune: huge_pages 'try' once shared_buffers reaches 2GB, else 'off'.
HUGE_PAGES_FROM = 2 * GB

#: PostgreSQL's default max_worker_processes, kept as a floor.
MAX_WORKER_PROCESSES_MIN = 8

#: PGTune's cap on workers per Gather and per maintenance command (except dw for Gather).
PARALLEL_WORKERS_CAP = 4

#: Ends sessions left idle inside a transaction: they hold a server connection, locks and
#: the xmin horizon, and through a pooler they pin a server connection for nothing.
IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "10min"

#: PGTune, after PostgreSQL's own default change in 14.
CHECKPOINT_COMPLETION_TARGET = 0.9

#: MAX_BACKENDS in PostgreSQL (2^18 - 1) and slots kept for processes that are not
#: connections (autovacuum slots, WAL senders, special workers).
MAX_BACKENDS = 2**18 - 1
OTHER_BACKEND_SLOTS = 100

Profile = namedtuple(
    "Profile",
    "default_connections work_mem_allocations shared_buffers_divisor effective_cache_share "
    "maintenance_divisor min_wal_size max_wal_size default_statistics_target",
)

#: Workload profiles. default_connections, the divisors, WAL sizes and statistics targets
#: are PGTune's. work_mem_allocations is PGTune's work_mem divisor 3 times its profile factor
#: (1 for web and oltp, 2 for dw and mixed, 6 for desktop): more sort and hash nodes per
#: query, and on a desktop room left for other programs. It also absorbs hash_mem_multiplier.
PROFILES = {
    "web": Profile(200, 3, 4, Fraction(3, 4), 16, 1 * GB, 4 * GB, 100),
    "oltp": Profile(300, 3, 4, Fraction(3, 4), 16, 2 * GB, 8 * GB, 100),
    "dw": Profile(40, 6, 4, Fraction(3, 4), 8, 4 * GB, 16 * GB, 500),
    "mixed": Profile(100, 6, 4, Fraction(3, 4), 16, 1 * GB, 4 * GB, 100),
    "desktop": Profile(20, 18, 16, Fraction(1, 4), 16, 100 * MB, 2 * GB, 100),
}

Storage = namedtuple("Storage", "random_page_cost effective_io_concurrency")

#: PGTune's planner costs by storage. effective_io_concurrency needs posix_fadvise (Linux).
STORAGE = {
    "ssd": Storage(1.1, 200),
    "nvme": Storage(1.1, 1000),
    "san": Storage(1.1, 300),
    "hdd": Storage(4.0, 2),
}

DEFAULT_PROFILE = "mixed"
DEFAULT_STORAGE = "ssd"
DEFAULT_SUPERUSER_RESERVED = 3

SPEC_REQUIRED = ("memory", "cpus", "version")
SPEC_OPTIONAL = (
    "profile",
    "storage",
    "max_connections",
    "connection_demand",
    "memory_fraction",
    "reserved_memory",
    "overrides",
    "superuser_reserved_connections",
    "reserved_connections",
)

#: Settings with their own spec key, so the ceiling check sees them.
_SPEC_OWNED = ("max_connections", "superuser_reserved_connections", "reserved_connections")

_CUSTOM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)+$")


def _autovacuum_work_mem_cap(version):
    """1GB before 17 (VACUUM's dead-tuple array cannot grow past it), PGTune's 2GB from 17."""
    return 1 * GB if version < 17 else 2 * GB


def stable_usable(size_bytes):
    """Round down to a multiple of the largest power of two <= size/64 (at least 8kB).

    Loses at most 1/64; whole-GB sizes below 128GB and powers of two stay as they are.
    Monotonic: more memory never gives less.
    """
    step = max(BLOCK, 2 ** int(math.log2(max(size_bytes // 64, 1))))
    return floor_to(size_bytes, step)


def _check_overrides(overrides, version, memory):
    """Validate pinned settings: known names, read-only names, sizes that parse and fit their range."""
    if overrides is None:
        return {}
    check_mapping(overrides, "overrides")
    known = known_parameters(version)
    pinned = {}
    for raw_name, value in overrides.items():
        if not isinstance(raw_name, str):
            raise AnsibleFilterError(f"overrides key {raw_name!r} is not a parameter name")
        name = canonical_name(raw_name.lower(), version)
        if name in _SPEC_OWNED:
            raise AnsibleFilterError(
                f"overrides sets {raw_name}; give it as the spec key {name} instead, so it is checked "
                "against the memory ceiling"
            )
        if name not in known and not _CUSTOM_NAME.match(name):
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise AnsibleFilterError(
                f"overrides sets {raw_name!r}, which PostgreSQL {version} does not know{hint}; "
                "allowed are its parameter names and extension settings such as 'pg_stat_statements.max'"
            )
        if name in READ_ONLY:
            raise AnsibleFilterError(
                f"overrides sets {raw_name}, a read-only parameter a configuration file cannot set"
            )
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise AnsibleFilterError(f"overrides.{raw_name} must be a single value, got {value!r}")
        size_range = memory_range(name, version)
        if size_range:
            _check_memory_value(name, raw_name, value, size_range)
        pinned[name] = version_value(name, value, version)
    if "shared_buffers" in pinned and _size_of(pinned["shared_buffers"], "shared_buffers") >= memory:
        raise AnsibleFilterError(
            f"overrides.shared_buffers {pinned['shared_buffers']!r} is not below the usable memory of "
            f"{describe_size(memory)}; lower it or give the host more memory"
        )
    for key in ("autovacuum_max_workers", "max_parallel_workers", "max_worker_processes"):
        if key in pinned:
            as_int(pinned[key], f"overrides.{key}", minimum=0)
    return pinned


def _check_memory_value(name, raw_name, value, size_range):
    unit, low, high = size_range
    if low == -1 and value in (-1, "-1"):
        return
    base_units = parse_size(value, unit, what=f"overrides.{raw_name}") // unit_bytes(unit)
    if not low <= base_units <= high:
        raise AnsibleFilterError(
            f"overrides.{raw_name} {value!r} is {base_units} x {unit}, outside PostgreSQL's range "
            f"{low} to {high} (x {unit})"
        )


def _size_of(value, name):
    """Bytes of a pinned memory setting (unitless numbers count in the setting's base unit)."""
    unit = memory_range(name, 18)[0]
    return parse_size(value, unit, what=f"overrides.{name}")


def _check_spec(spec):
    check_keys(spec, SPEC_REQUIRED, SPEC_OPTIONAL, "pg_tune spec")
    version = check_version(spec["version"], "version")
    memory = as_size(spec["memory"], "memory", minimum=1)
    fraction = as_fraction(spec.get("memory_fraction", 1.0), "memory_fraction")
    reserved_memory = as_size(spec.get("reserved_memory", 0), "reserved_memory")
    usable = int(memory * fraction) - reserved_memory
    if usable <= 0:
        raise AnsibleFilterError(
            f"usable memory is memory {describe_size(memory)} x memory_fraction {fraction} - reserved_memory "
            f"{describe_size(reserved_memory)} = {describe_size(usable)}; it must be more than 0"
        )
    reserved = as_int(spec.get("reserved_connections", 0), "reserved_connections", minimum=0, maximum=MAX_BACKENDS)
    if reserved and "reserved_connections" not in known_parameters(version):
        raise AnsibleFilterError(
            f"reserved_connections {reserved} needs PostgreSQL 16 or later; version {version} has no such setting"
        )
    checked = {
        "version": version,
        "memory": memory,
        "memory_fraction": fraction,
        "reserved_memory": reserved_memory,
        "usable": stable_usable(usable),
        "cpus": as_int(spec["cpus"], "cpus", minimum=1),
        "profile": as_choice(spec.get("profile", DEFAULT_PROFILE), "profile", tuple(PROFILES)),
        "storage": as_choice(spec.get("storage", DEFAULT_STORAGE), "storage", tuple(STORAGE)),
        "superuser_reserved_connections": as_int(
            spec.get("superuser_reserved_connections", DEFAULT_SUPERUSER_RESERVED),
            "superuser_reserved_connections",
            minimum=0,
            maximum=MAX_BACKENDS,
        ),
        "reserved_connections": reserved,
        "max_connections": None,
        "connection_demand": None,
    }
    if spec.get("max_connections") is not None:
        checked["max_connections"] = as_int(spec["max_connections"], "max_connections", minimum=1)
    if spec.get("connection_demand") is not None:
        checked["connection_demand"] = as_int(spec["connection_demand"], "connection_demand", minimum=0)
    checked["overrides"] = _check_overrides(spec.get("overrides"), version, checked["usable"])
    return checked


def _parallel(cpus, profile):
    """PGTune's parallel settings by CPU count, with max_worker_processes kept at 8 or more."""
    half = 0 if cpus == 1 else math.ceil(cpus / 2)
    per_gather = half if profile == "dw" else min(half, PARALLEL_WORKERS_CAP)
    return {
        "max_worker_processes": max(MAX_WORKER_PROCESSES_MIN, cpus),
        "max_parallel_workers": cpus,
        "max_parallel_workers_per_gather": per_gather,
        "max_parallel_maintenance_workers": min(half, PARALLEL_WORKERS_CAP),
    }


def _wal_buffers(shared_buffers):
    """PGTune: 3% of shared_buffers, at most 16MB (14MB and up become 16MB), at least 32kB, whole blocks."""
    wal = floor_to(shared_buffers * 3 // 100, KB)
    if wal > WAL_BUFFERS_ROUND_UP_FROM:
        wal = WAL_BUFFERS_MAX
    return max(WAL_BUFFERS_MIN, floor_to(wal, BLOCK))


def _wal_buffers_bytes(pinned, shared_buffers):
    """Bytes of wal_buffers: PGTune's rule, or the pinned value (-1: the server's 1/32 of shared_buffers, at most 16MB)."""
    if pinned is None:
        return _wal_buffers(shared_buffers)
    if pinned in (-1, "-1"):
        return min(shared_buffers // 32, 16 * MB)
    return _size_of(pinned, "wal_buffers")


def _clamp(name, size_bytes):
    """Keep a computed size within PostgreSQL's maximum for ``name`` (reached only on hosts of many TB)."""
    unit, _low, high = memory_range(name, 18)
    return min(size_bytes, high * unit_bytes(unit))


def _memory_model(usable, checked):
    """The memory settings for ``usable`` bytes, and the connection ceiling they leave."""
    profile = PROFILES[checked["profile"]]
    version = checked["version"]
    pinned = checked["overrides"]
    parallel = _parallel(checked["cpus"], checked["profile"])
    parallel.update({key: int(pinned[key]) for key in parallel if key in pinned})

    shared_buffers = _clamp(
        "shared_buffers", max(SHARED_BUFFERS_MIN, floor_to(usable // profile.shared_buffers_divisor, BLOCK))
    )
    if "shared_buffers" in pinned:
        shared_buffers = _size_of(pinned["shared_buffers"], "shared_buffers")
    wal_buffers = _wal_buffers_bytes(pinned.get("wal_buffers"), shared_buffers)
    maintenance_work_mem = min(
        MAINTENANCE_WORK_MEM_CAP, max(MAINTENANCE_WORK_MEM_MIN, floor_to(usable // profile.maintenance_divisor, KB))
    )
    if "maintenance_work_mem" in pinned:
        maintenance_work_mem = _size_of(pinned["maintenance_work_mem"], "maintenance_work_mem")
    autovacuum_work_mem = min(maintenance_work_mem, _autovacuum_work_mem_cap(version))
    if "autovacuum_work_mem" in pinned:
        pinned_av = pinned["autovacuum_work_mem"]
        autovacuum_work_mem = (
            maintenance_work_mem if pinned_av in (-1, "-1") else _size_of(pinned_av, "autovacuum_work_mem")
        )
    autovacuum_workers = int(pinned.get("autovacuum_max_workers", AUTOVACUUM_MAX_WORKERS))
    maintenance_memory = maintenance_work_mem + autovacuum_workers * autovacuum_work_mem
    ceiling_work_mem = _size_of(pinned["work_mem"], "work_mem") if "work_mem" in pinned else CEILING_WORK_MEM
    per_connection = CONNECTION_OVERHEAD + profile.work_mem_allocations * ceiling_work_mem
    shared_memory = shared_buffers + wal_buffers
    available = usable - shared_memory - maintenance_memory
    ceiling = max(0, available // per_connection - parallel["max_parallel_workers"])
    ceiling = min(ceiling, MAX_BACKENDS - OTHER_BACKEND_SLOTS - parallel["max_worker_processes"])
    return {
        "usable": usable,
        "shared_buffers": shared_buffers,
        "wal_buffers": wal_buffers,
        "effective_cache_size": _clamp(
            "effective_cache_size", max(BLOCK, floor_to(int(usable * profile.effective_cache_share), BLOCK))
        ),
        "maintenance_work_mem": maintenance_work_mem,
        "autovacuum_work_mem": autovacuum_work_mem,
        "autovacuum_max_workers": autovacuum_workers,
        "maintenance_memory": maintenance_memory,
        "shared_memory": shared_memory,
        "available": available,
        "per_connection": per_connection,
        "ceiling": ceiling,
        "parallel": parallel,
    }


def _memory_needed(checked, connections):
    """The least memory (spec ``memory``) whose ceiling reaches ``connections``, found by bisection in MB."""

    def fits(usable):
        return _memory_model(stable_usable(usable), checked)["ceiling"] >= connections

    high = max(checked["usable"], 64 * MB)
    while not fits(high):
        high *= 2
        if high > 2**60:
            return None
    low = 0
    while high - low > MB:
        middle = floor_to((low + high) // 2, MB)
        if middle <= low:
            break
        if fits(middle):
            high = middle
        else:
            low = middle
    memory = math.ceil((high + checked["reserved_memory"]) / checked["memory_fraction"])
    step = GB if memory > 4 * GB else 128 * MB  # a round figure to tell a person; more memory never hurts
    return -(-memory // step) * step


def _memory_words(model):
    return (
        f"{describe_size(model['usable'])} of usable memory allows "
        f"({describe_size(model['shared_memory'])} shared_buffers and wal_buffers, "
        f"{describe_size(model['maintenance_memory'])} maintenance memory, "
        f"{describe_size(model['per_connection'])} per connection)"
    )


def _too_many(checked, model, what, connections):
    needed = _memory_needed(checked, connections)
    need_words = f"about {describe_size(needed)} of memory would be needed" if needed else "no memory size fits it"
    raise AnsibleFilterError(
        f"{what} needs max_connections {connections}, above the ceiling of {model['ceiling']} connections that "
        f"{_memory_words(model)}; {need_words} (memory as in the spec, before memory_fraction and "
        "reserved_memory), or lower the demand by pooling clients through PgBouncer"
    )


def plan(spec):
    """Validate ``spec`` and decide every number; the public filters shape what they return from this."""
    checked = _check_spec(spec)
    model = _memory_model(checked["usable"], checked)
    reserved_slots = checked["superuser_reserved_connections"] + checked["reserved_connections"]
    slots_words = (
        f"{checked['superuser_reserved_connections']} superuser_reserved_connections + "
        f"{checked['reserved_connections']} reserved_connections"
    )
    minimum = reserved_slots + 1
    if model["ceiling"] < minimum:
        needed = _memory_needed(checked, minimum)
        raise AnsibleFilterError(
            f"memory too small: {_memory_words(model)} only {model['ceiling']} connections, fewer than the "
            f"{minimum} PostgreSQL needs to start ({slots_words} + 1); about {describe_size(needed)} of memory "
            "would be needed"
        )
    demand, fixed = checked["connection_demand"], checked["max_connections"]
    within = f"within the ceiling of {model['ceiling']} that {_memory_words(model)}"
    if demand is not None:
        required = max(demand + reserved_slots, minimum)
        demand_words = f"connection_demand {demand} + {slots_words}"
        if fixed is not None and fixed < required:
            raise AnsibleFilterError(
                f"max_connections {fixed} is below what the demand needs: {demand_words} = {required}; "
                "raise max_connections or leave it out so the demand sets it"
            )
        if required > model["ceiling"]:
            _too_many(checked, model, demand_words, required)
    if fixed is not None:
        if fixed < minimum:
            raise AnsibleFilterError(
                f"max_connections {fixed} must be above {slots_words} = {reserved_slots}, or PostgreSQL will not start"
            )
        if fixed > model["ceiling"]:
            _too_many(checked, model, f"max_connections {fixed} (given)", fixed)
        source, max_connections = "fixed", fixed
        reason = f"max_connections {fixed} was given and is {within}"
        if demand is not None:
            reason += f"; it covers {demand_words} = {required}"
    elif demand is not None:
        source, max_connections = "demand", required
        reason = f"{demand_words} = {required}, {within}"
    else:
        profile = checked["profile"]
        default = PROFILES[profile].default_connections
        source, max_connections = "profile_default", min(default, model["ceiling"])
        if default <= model["ceiling"]:
            reason = (
                f"no connection_demand or max_connections given: PGTune's default {default} for {profile}, {within}"
            )
        else:
            reason = (
                f"no connection_demand or max_connections given: PGTune's default {default} for {profile} is above "
                f"the ceiling of {model['ceiling']} that {_memory_words(model)}, so it is capped at "
                f"{model['ceiling']}; give connection_demand to size it from real demand"
            )
    return checked, model, source, max_connections, reason


def _work_mem(model, max_connections, allocations):
    """Split what is left after shared and maintenance memory among every process that runs queries."""
    processes = max_connections + model["parallel"]["max_parallel_workers"]
    share = (model["available"] - processes * CONNECTION_OVERHEAD) // (processes * allocations)
    return _clamp("work_mem", max(WORK_MEM_MIN, floor_to(share, KB)))


def max_connections_report(spec):
    """See the pg_max_connections filter."""
    checked, model, source, max_connections, reason = plan(spec)
    return {
        "ceiling": model["ceiling"],
        "max_connections": max_connections,
        "source": source,
        "reason": reason,
        "usable_memory": model["usable"],
        "shared_buffers": model["shared_buffers"],
        "shared_memory": model["shared_memory"],
        "maintenance_memory": model["maintenance_memory"],
        "per_connection_memory": model["per_connection"],
        "parallel_workers": model["parallel"]["max_parallel_workers"],
        "superuser_reserved_connections": checked["superuser_reserved_connections"],
        "reserved_connections": checked["reserved_connections"],
    }


def tune(spec):
    """See the pg_tune filter."""
    checked, model, _source, max_connections, _reason = plan(spec)
    profile = PROFILES[checked["profile"]]
    storage = STORAGE[checked["storage"]]
    settings = {
        "max_connections": max_connections,
        "superuser_reserved_connections": checked["superuser_reserved_connections"],
        "shared_buffers": format_size(model["shared_buffers"]),
        "effective_cache_size": format_size(model["effective_cache_size"]),
        "work_mem": format_size(_work_mem(model, max_connections, profile.work_mem_allocations)),
        "maintenance_work_mem": format_size(model["maintenance_work_mem"]),
        "autovacuum_work_mem": format_size(model["autovacuum_work_mem"]),
        "wal_buffers": format_size(model["wal_buffers"]),
        "huge_pages": "try" if model["shared_buffers"] >= HUGE_PAGES_FROM else "off",
        "min_wal_size": format_size(profile.min_wal_size),
        "max_wal_size": format_size(profile.max_wal_size),
        "checkpoint_completion_target": CHECKPOINT_COMPLETION_TARGET,
        "random_page_cost": storage.random_page_cost,
        "effective_io_concurrency": storage.effective_io_concurrency,
        "default_statistics_target": profile.default_statistics_target,
        "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
    }
    settings.update(_parallel(checked["cpus"], checked["profile"]))
    if "reserved_connections" in known_parameters(checked["version"]):
        settings["reserved_connections"] = checked["reserved_connections"]
    settings.update(checked["overrides"])
    _check_wal_sizes(settings)
    return dict(sorted(settings.items()))


def _check_wal_sizes(settings):
    low = parse_size(settings["min_wal_size"], "MB", what="min_wal_size")
    high = parse_size(settings["max_wal_size"], "MB", what="max_wal_size")
    if low > high:
        raise AnsibleFilterError(
            f"min_wal_size {settings['min_wal_size']} is above max_wal_size {settings['max_wal_size']}; "
            "pin both in overrides so that min_wal_size <= max_wal_size"
        )


def worst_case_memory(settings, profile):
    """Bytes PostgreSQL may use at worst with ``settings`` (a pg_tune result) under ``profile``.

    The left side of the memory bound in this module's docstring; pg_tune keeps it at or
    below the usable memory.
    """

    def size(name):
        return parse_size(settings[name], memory_range(name, 18)[0], what=name)

    maintenance_work_mem = size("maintenance_work_mem")
    autovacuum_work_mem = (
        maintenance_work_mem if settings["autovacuum_work_mem"] in (-1, "-1") else size("autovacuum_work_mem")
    )
    processes = int(settings["max_connections"]) + int(settings["max_parallel_workers"])
    per_process = CONNECTION_OVERHEAD + PROFILES[profile].work_mem_allocations * size("work_mem")
    autovacuum_workers = int(settings.get("autovacuum_max_workers", AUTOVACUUM_MAX_WORKERS))
    shared_buffers = size("shared_buffers")
    return (
        shared_buffers
        + _wal_buffers_bytes(settings["wal_buffers"], shared_buffers)
        + processes * per_process
        + maintenance_work_mem
        + autovacuum_workers * autovacuum_work_mem
    )
