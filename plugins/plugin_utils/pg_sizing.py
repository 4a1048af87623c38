"""PostgreSQL's memory and connection sizing: the model behind pg_tune and pg_max_connections.

One memory bound holds for every result::

    shared_buffers + wal_buffers + maintenance_work_mem + autovacuum_max_workers x autovacuum_work_mem
      + (max_connections + max_parallel_workers) x connection_memory
      + (active connections + max_parallel_workers) x allocations x work_mem
    <= usable memory = memory x memory_fraction - reserved_memory

``connection_memory`` is a backend's private memory outside work_mem, *measured*: 1.8 to
2.0MB for an active pgbench backend on PostgreSQL 15, 17 and 18 (bench/memory.py,
bench/results/2026-12-01/memory.md). ``allocations`` is how many work_mem-sized sort or
hash areas one query may hold at once (PGTune's divisor of 3 times its profile factor).
Active connections are those that may run queries at once: every connection, unless the
demand declares some of its connections idle (``active_demand``).

Two limits, kept apart:

* **the ceiling**: the most connections the bound carries with every one active at the
  work_mem floor (1MB). Above it is an error: memory cannot carry it. It is about
  memory / 5MB for web and oltp; Amazon RDS allows memory / 9531392 (9.1MB, counting
  shared_buffers too), and the lab's 1GB and 2GB containers ran the ceiling's worth of
  pgbench connections without an OOM kill (bench/memory.py, part "ceiling").
* **the advice**: how many connections a server this size serves well *at once*, a small
  multiple of its cores (PostgreSQL wiki, "Number Of Database Connections"; the pool
  sweep, bench/pools.py). Above it the result warns and recommends pooling; it never refuses.

max_connections = demand + reserved slots + spare slots. The spare, by default
max(10, 20% of the demand) where the ceiling allows, keeps room for clients nobody
declared: an operator's psql, a migration, pg_dump, one more autoscaled instance.

Shared buffers, effective_cache_size, maintenance_work_mem, wal_buffers, WAL sizes,
planner costs and parallel workers follow PGTune (le0pard/pgtune,
src/features/configuration/configurationSlice.js, 2025 version), applied to usable
memory instead of the host's RAM. Where headroom differs from PGTune, and why:

* max_connections comes from the real connection demand (pooler pools plus direct
  clients) plus spare slots when it is known, and is checked against the memory ceiling
  instead of being a free input.
* work_mem divides what is left among the *active* connections (PGTune divides among
  max_connections), after per-connection memory, maintenance memory and wal_buffers,
  which PGTune leaves out. It has a floor (1MB, what every connection gets at the
  ceiling; PGTune gives 1.3MB for web on 1GB at its default 200 connections) and a cap
  (256MB: on large hosts with few connections PGTune's share runs into GBs per sort
  node, times hash_mem_multiplier for hashes).
* autovacuum_work_mem is always set, capped at 1GB before PostgreSQL 17 (VACUUM
  cannot use more for dead tuples there) and at 2GB from 17 (PGTune's cap).
* Parallel workers shrink with memory: at most a sixteenth of the processes memory can
  carry, so many CPUs never make a small host untunable (PGTune gives one worker per CPU).
  max_worker_processes never goes below PostgreSQL's default of 8 (logical replication
  and extensions take those slots). With fewer than 4 CPUs, where PGTune leaves parallel
  settings alone, they follow the same rule (1 CPU: no parallel query).
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

#: A backend's private memory outside work_mem (process, catalog, relation and plan
#: caches, page tables), measured from the cgroup with N connections at once
#: (bench/results/2026-12-01/memory.md): 1.4-1.6MB idle, 1.8-2.0MB under pgbench on
#: PostgreSQL 15, 17 and 18. Caches grow with the schema a connection touches: 16.6-18.4MB
#: when each backend reads 2000 tables; set connection_memory for such a schema.
CONNECTION_MEMORY = 2 * MB

#: The least work_mem a connection's allocations get; at the ceiling every connection has
#: exactly this. PGTune's formula gives 1.3MB for web on 1GB at its default 200 connections.
WORK_MEM_FLOOR = 1 * MB

#: The most work_mem headroom computes (pin work_mem in overrides for more): beyond it one
#: sort rarely gains, and a query holds allocations x hash_mem_multiplier x work_mem at worst.
WORK_MEM_CAP = 256 * MB

#: Spare slots above demand + reserved, by default: at least SPARE_MIN and SPARE_SHARE of
#: the demand, for clients nobody declared (psql, migrations, pg_dump, one more instance).
SPARE_MIN = 10
SPARE_SHARE = Fraction(1, 5)
SPARE_RULE = f"max({SPARE_MIN}, {SPARE_SHARE.numerator * 100 // SPARE_SHARE.denominator}% of demand)"

#: Parallel workers take at most this share of the processes memory can carry.
PARALLEL_SHARE = Fraction(1, 16)

#: Connections a server runs best at once: BEST_PER_CPU x CPUs + BEST_BASE, PgBouncer's pool
#: rule. The pool sweep (bench/pools.py, bench/results/2026-12-01/pools.md: pools 3 to 40, both
#: pgbench workloads and scales, 10 to 1000 clients, server limited to 1 and 2 CPUs) found the
#: best pool at 8 to 14 on both limits: below 8 the TPC-B-like mix waits on commits (down to
#: 0.67 of the best), from 28 up select-only loses to contention. 4 x CPUs + 4 kept 0.81 to 0.84
#: of the best in the worst row and 0.92 to 0.95 on average; 2 x CPUs + 1 (the PostgreSQL
#: wiki's (cores x 2) + spindles with one spindle) 0.67 to 0.74 and 0.84 to 0.88; 20 (the
#: seed's config) 0.66 to 0.74 and 0.88 to 0.91. HikariCP's "About Pool Sizing" gives the same
#: reasoning: cores plus what waits on I/O, far below the client count.
BEST_PER_CPU = 4
BEST_BASE = 4

#: The advice: more connections than ADVICE_FACTOR x the best at once lose throughput (the
#: sweep's pool 40 on 1 to 2 CPUs: 0.66 to 0.95 of the best) and memory; beyond it, pool.
ADVICE_FACTOR = 2

#: Amazon RDS's default max_connections is memory / this (bytes): for comparison only.
RDS_BYTES_PER_CONNECTION = 9531392

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
    "spare_connections",
    "active_demand",
    "connection_memory",
)

#: Settings with their own spec key, so the ceiling check sees them.
_SPEC_OWNED = ("max_connections", "superuser_reserved_connections", "reserved_connections")

_CUSTOM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)+$")


def best_active_connections(cpus):
    """Connections a server with ``cpus`` CPUs runs best at once (BEST_PER_CPU x cpus + BEST_BASE)."""
    return BEST_PER_CPU * cpus + BEST_BASE


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
    checked["spare_connections"] = None
    if spec.get("spare_connections") is not None:
        checked["spare_connections"] = as_int(spec["spare_connections"], "spare_connections", minimum=0)
    checked["active_demand"] = None
    if spec.get("active_demand") is not None:
        if checked["connection_demand"] is None:
            raise AnsibleFilterError(
                f"active_demand {spec['active_demand']!r} is the active share of connection_demand, which is not given"
            )
        checked["active_demand"] = as_int(
            spec["active_demand"], "active_demand", minimum=0, maximum=checked["connection_demand"]
        )
    checked["connection_memory"] = as_size(spec.get("connection_memory", CONNECTION_MEMORY), "connection_memory", minimum=1)
    checked["overrides"] = _check_overrides(spec.get("overrides"), version, checked["usable"])
    return checked


def _parallel(cpus, profile, processes):
    """PGTune's parallel settings by CPU count, on at most PARALLEL_SHARE of ``processes`` (what memory carries).

    max_worker_processes is kept at 8 or more.
    """
    workers = min(cpus, int(processes * PARALLEL_SHARE))
    half = 0 if cpus == 1 or workers <= 1 else math.ceil(workers / 2)
    per_gather = half if profile == "dw" else min(half, PARALLEL_WORKERS_CAP)
    return {
        "max_worker_processes": max(MAX_WORKER_PROCESSES_MIN, workers),
        "max_parallel_workers": workers,
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
    floor_work_mem = _size_of(pinned["work_mem"], "work_mem") if "work_mem" in pinned else WORK_MEM_FLOOR
    per_connection = checked["connection_memory"] + profile.work_mem_allocations * floor_work_mem
    shared_memory = shared_buffers + wal_buffers
    available = usable - shared_memory - maintenance_memory
    processes = max(0, available // per_connection)
    parallel = _parallel(checked["cpus"], checked["profile"], processes)
    parallel.update({key: int(pinned[key]) for key in parallel if key in pinned})
    ceiling = max(0, processes - parallel["max_parallel_workers"])
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
        "connection_memory": checked["connection_memory"],
        "ceiling": ceiling,
        "advice": ADVICE_FACTOR * best_active_connections(checked["cpus"]),
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


def default_spare(demand):
    """Spare slots above a declared demand: max(SPARE_MIN, SPARE_SHARE of it), rounded up."""
    return max(SPARE_MIN, math.ceil(demand * SPARE_SHARE))


def _demand_connections(checked, model, reserved_slots, slots_words, warnings):
    """max_connections for a declared demand: demand + reserved + spare, and the spare it got."""
    demand, fixed, spare = checked["connection_demand"], checked["max_connections"], checked["spare_connections"]
    required = max(demand + reserved_slots, reserved_slots + 1)
    demand_words = f"connection_demand {demand} + {slots_words}"
    if fixed is not None and fixed < required:
        raise AnsibleFilterError(
            f"max_connections {fixed} is below what the demand needs: {demand_words} = {required}; "
            "raise max_connections or leave it out so the demand sets it"
        )
    if required > model["ceiling"]:
        _too_many(checked, model, demand_words, required)
    default_spare_slots = default_spare(demand)
    if fixed is not None:
        if spare is not None and fixed < required + spare:
            raise AnsibleFilterError(
                f"max_connections {fixed} leaves {fixed - required} spare slots above {demand_words} = {required}, "
                f"fewer than spare_connections {spare}; raise max_connections or leave one of them out"
            )
        if fixed - required < min(default_spare_slots, model["ceiling"] - required) and spare is None:
            warnings.append(
                f"max_connections {fixed} leaves {fixed - required} spare slots above {demand_words} = {required}; "
                f"the default keeps {default_spare_slots} ({SPARE_RULE}) for clients nobody declared"
            )
        return "fixed", fixed, fixed - required, f"max_connections {fixed} was given; it covers {demand_words} = {required}"
    room = model["ceiling"] - required
    if spare is not None and spare > room:
        raise AnsibleFilterError(
            f"spare_connections {spare} does not fit: {demand_words} = {required} leaves {room} slots under the "
            f"ceiling of {model['ceiling']} that {_memory_words(model)}; lower it, or pool clients through PgBouncer"
        )
    wanted = default_spare_slots if spare is None else spare
    given = "spare_connections" if spare is not None else f"default spare {SPARE_RULE}"
    if wanted > room:
        warnings.append(
            f"only {room} spare slots fit above {demand_words} = {required} under the ceiling of {model['ceiling']}, "
            f"fewer than the {wanted} of the {given}; clients nobody declared may find the server full"
        )
    spare = min(wanted, room)
    return "demand", required + spare, spare, f"{demand_words} + {spare} spare ({given}) = {required + spare}"


def plan(spec):
    """Validate ``spec`` and decide every number; the public filters shape what they return from this.

    Returns the checked spec, the memory model and a decision: source, max_connections,
    spare slots, the active connections work_mem is sized for, reason and warnings.
    """
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
    if fixed is not None and fixed < minimum:
        raise AnsibleFilterError(
            f"max_connections {fixed} must be above {slots_words} = {reserved_slots}, or PostgreSQL will not start"
        )
    if fixed is not None and fixed > model["ceiling"]:
        _too_many(checked, model, f"max_connections {fixed} (given)", fixed)
    warnings = []
    within = f"within the ceiling of {model['ceiling']} that {_memory_words(model)}"
    spare = None
    if demand is not None:
        source, max_connections, spare, reason = _demand_connections(
            checked, model, reserved_slots, slots_words, warnings
        )
        reason += f", {within}"
    elif fixed is not None:
        # Without a demand there is nothing to keep spare above: spare_connections does not apply.
        source, max_connections = "fixed", fixed
        reason = f"max_connections {fixed} was given and is {within}"
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
    # Every connection may run a query at once, except demand declared idle.
    idle = demand - checked["active_demand"] if checked["active_demand"] is not None else 0
    active = max_connections - idle
    # The declared load: the active demand, else a given max_connections (a standby raised to its
    # primary's max_connections by parity keeps its own, smaller load).
    at_once = checked["active_demand"] if checked["active_demand"] is not None else demand
    count = max_connections if at_once is None else at_once
    if source != "profile_default" and count > model["advice"]:
        warnings.append(
            f"{count} connections may run queries at once, more than the {model['advice']} that "
            f"{checked['cpus']} CPU(s) serve well (twice the {best_active_connections(checked['cpus'])} that run "
            f"best, {BEST_PER_CPU} x CPUs + {BEST_BASE}: bench/pools.py); fewer at once run faster: route direct "
            "clients through PgBouncer (transaction pooling) and keep the pools that reach this server near "
            f"{best_active_connections(checked['cpus'])} in all"
        )
    decision = {
        "source": source,
        "max_connections": max_connections,
        "spare_connections": spare,
        "active_connections": active,
        "reason": reason,
        "warnings": warnings,
    }
    return checked, model, decision


def _work_mem(model, max_connections, active, allocations):
    """Split what is left after shared, maintenance and per-connection memory among the active processes."""
    workers = model["parallel"]["max_parallel_workers"]
    left = model["available"] - (max_connections + workers) * model["connection_memory"]
    share = left // (max(1, active + workers) * allocations)
    return _clamp("work_mem", min(WORK_MEM_CAP, max(WORK_MEM_MIN, floor_to(share, KB))))


def max_connections_report(spec):
    """See the pg_max_connections filter."""
    return _report(*plan(spec))


def _report(checked, model, decision):
    return {
        "ceiling": model["ceiling"],
        "advice": model["advice"],
        "max_connections": decision["max_connections"],
        "spare_connections": decision["spare_connections"],
        "active_connections": decision["active_connections"],
        "source": decision["source"],
        "reason": decision["reason"],
        "warnings": decision["warnings"],
        "usable_memory": model["usable"],
        "shared_buffers": model["shared_buffers"],
        "shared_memory": model["shared_memory"],
        "maintenance_memory": model["maintenance_memory"],
        "connection_memory": model["connection_memory"],
        "per_connection_memory": model["per_connection"],
        "parallel_workers": model["parallel"]["max_parallel_workers"],
        "superuser_reserved_connections": checked["superuser_reserved_connections"],
        "reserved_connections": checked["reserved_connections"],
    }


def tune(spec):
    """See the pg_tune filter."""
    return tune_with_report(spec)[0]


def tune_with_report(spec):
    """pg_tune's settings and pg_max_connections' report from one decision."""
    checked, model, decision = plan(spec)
    max_connections = decision["max_connections"]
    profile = PROFILES[checked["profile"]]
    storage = STORAGE[checked["storage"]]
    settings = {
        "max_connections": max_connections,
        "superuser_reserved_connections": checked["superuser_reserved_connections"],
        "shared_buffers": format_size(model["shared_buffers"]),
        "effective_cache_size": format_size(model["effective_cache_size"]),
        "work_mem": format_size(
            _work_mem(model, max_connections, decision["active_connections"], profile.work_mem_allocations)
        ),
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
    settings.update(model["parallel"])
    if "reserved_connections" in known_parameters(checked["version"]):
        settings["reserved_connections"] = checked["reserved_connections"]
    settings.update(checked["overrides"])
    _check_wal_sizes(settings)
    return dict(sorted(settings.items())), _report(checked, model, decision)


def _check_wal_sizes(settings):
    low = parse_size(settings["min_wal_size"], "MB", what="min_wal_size")
    high = parse_size(settings["max_wal_size"], "MB", what="max_wal_size")
    if low > high:
        raise AnsibleFilterError(
            f"min_wal_size {settings['min_wal_size']} is above max_wal_size {settings['max_wal_size']}; "
            "pin both in overrides so that min_wal_size <= max_wal_size"
        )


def worst_case_memory(settings, profile, active_connections=None, connection_memory=CONNECTION_MEMORY):
    """Bytes PostgreSQL may use at worst with ``settings`` (a pg_tune result) under ``profile``.

    The left side of the memory bound in this module's docstring, with ``active_connections``
    (default: every connection) running queries at once; pg_tune keeps it at or below the
    usable memory.
    """

    def size(name):
        return parse_size(settings[name], memory_range(name, 18)[0], what=name)

    maintenance_work_mem = size("maintenance_work_mem")
    autovacuum_work_mem = (
        maintenance_work_mem if settings["autovacuum_work_mem"] in (-1, "-1") else size("autovacuum_work_mem")
    )
    connections = int(settings["max_connections"])
    active = connections if active_connections is None else active_connections
    workers = int(settings["max_parallel_workers"])
    autovacuum_workers = int(settings.get("autovacuum_max_workers", AUTOVACUUM_MAX_WORKERS))
    shared_buffers = size("shared_buffers")
    return (
        shared_buffers
        + _wal_buffers_bytes(settings["wal_buffers"], shared_buffers)
        + (connections + workers) * connection_memory
        + (active + workers) * PROFILES[profile].work_mem_allocations * size("work_mem")
        + maintenance_work_mem
        + autovacuum_workers * autovacuum_work_mem
    )
