"""Memory sizes as PostgreSQL reads and writes them.

PostgreSQL's memory settings take an integer in the setting's base unit
(``kB`` for work_mem, ``8kB`` blocks for shared_buffers, ``MB`` for
max_wal_size: the ``unit`` column of ``pg_settings``) or a number with one of
the units ``B``, ``kB``, ``MB``, ``GB``, ``TB``. Units are case-sensitive and
count in powers of 1024. A fractional value is first rounded to the next
smaller unit, then to the base unit, both half to even (``rint``). This module
copies that arithmetic from ``convert_to_base_unit`` and ``parse_int`` in
PostgreSQL's ``src/backend/utils/misc/guc.c`` (12 and later) and checked it
against ``postgres -C`` on 13, 15, 17 and 18: ``'30.1GB'`` for shared_buffers
reads as 3945216 blocks, ``'3932kB'`` for wal_buffers as 492 blocks.

In a configuration file a fractional size must be quoted
(``work_mem = '1.5GB'``): unquoted it is a syntax error.
"""

import math
import re

from ansible.errors import AnsibleFilterError

#: Memory units PostgreSQL accepts, largest first (GUC unit table order).
UNIT_BYTES = {
    "TB": 1024**4,
    "GB": 1024**3,
    "MB": 1024**2,
    "kB": 1024,
    "B": 1,
}

KB = UNIT_BYTES["kB"]
MB = UNIT_BYTES["MB"]
GB = UNIT_BYTES["GB"]
TB = UNIT_BYTES["TB"]
#: PostgreSQL's page: the base unit of shared_buffers, wal_buffers, effective_cache_size.
BLOCK = 8 * KB

ALLOWED_FORMS = (
    "a whole number of bytes, or a string such as '16GB', '1536MB', '1.5GB' or '512kB' "
    "with one of the units B, kB, MB, GB, TB (case-sensitive, 1024 multiples)"
)

_SIZE_RE = re.compile(r"^\s*(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(?P<unit>[A-Za-z]*)\s*$")
_BASE_UNIT_RE = re.compile(r"^(?P<count>\d*)(?P<unit>B|kB|MB|GB|TB)$")


def unit_bytes(unit):
    """Bytes in a pg_settings base unit such as ``'8kB'``, ``'kB'``, ``'MB'`` or ``'B'``."""
    match = _BASE_UNIT_RE.match(unit) if isinstance(unit, str) else None
    if not match or match.group("count").startswith("0"):
        raise AnsibleFilterError(
            f"unit {unit!r} is not a memory unit from pg_settings.unit; "
            "use one of 'B', 'kB', '8kB', 'MB' (a count may precede the unit, as in '8kB')"
        )
    return int(match.group("count") or 1) * UNIT_BYTES[match.group("unit")]


def _reject(value, what, unit):
    base = "" if unit == "B" else f" (a number without unit counts in {unit})"
    raise AnsibleFilterError(f"{what} {value!r} is not a size: expected {ALLOWED_FORMS}{base}")


def parse_size(value, unit="B", what="size"):
    """Return the bytes PostgreSQL would store for ``value`` in a setting whose base unit is ``unit``.

    ``value`` is an int, a float, or a string as written in postgresql.conf.
    The result is a whole number of base units, in bytes: ``parse_size('1000B', 'kB')``
    is 1024 because a kB setting cannot hold 1000 bytes. Negative values, unknown
    or miscased units (``'16 GiB'``, ``'16gb'``) and text (``'lots'``) raise
    AnsibleFilterError naming ``what`` and the value.
    """
    base = unit_bytes(unit)
    if isinstance(value, bool):
        _reject(value, what, unit)
    if isinstance(value, (int, float)):
        number, value_unit = value, ""
    elif isinstance(value, str):
        match = _SIZE_RE.match(value)
        if not match:
            _reject(value, what, unit)
        text, value_unit = match.group("number"), match.group("unit")
        number = int(text) if text.lstrip("+").isdigit() else float(text)
    else:
        _reject(value, what, unit)
    if number < 0 or not math.isfinite(number):
        _reject(value, what, unit)
    if value_unit == "":
        base_units = round(number)
    elif value_unit in UNIT_BYTES:
        units = list(UNIT_BYTES)
        converted = number * UNIT_BYTES[value_unit] / base
        position = units.index(value_unit)
        if position + 1 < len(units):
            # PostgreSQL rounds '30.1GB' to a whole number of the next smaller unit first.
            step = UNIT_BYTES[units[position + 1]] / base
            converted = round(converted / step) * step
        base_units = round(converted)
    else:
        _reject(value, what, unit)
    return int(base_units) * base


def format_size(size_bytes, what="size"):
    """Format bytes in the largest unit that divides them exactly: ``'4GB'``, ``'1536MB'``, ``'16kB'``.

    PostgreSQL's memory settings count in kB or larger, so a size that is not a whole
    number of kB raises AnsibleFilterError rather than being rounded silently. Zero is ``'0'``.
    """
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int):
        raise AnsibleFilterError(f"{what} {size_bytes!r} is not a whole number of bytes")
    if size_bytes < 0:
        raise AnsibleFilterError(f"{what} {size_bytes!r} is negative; sizes are 0 or more bytes")
    if size_bytes == 0:
        return "0"
    for name, factor in UNIT_BYTES.items():
        if name != "B" and size_bytes % factor == 0:
            return f"{size_bytes // factor}{name}"
    raise AnsibleFilterError(
        f"{what} {size_bytes} bytes is not a whole number of kB; "
        "PostgreSQL's memory settings count in kB or larger, so round it first"
    )


def floor_to(size_bytes, step):
    """Round ``size_bytes`` down to a multiple of ``step``."""
    return size_bytes // step * step


def describe_size(size_bytes):
    """A size for messages: exact when short (``'4GB'``, ``'1040MB'``), else rounded (``'263.7MB'``)."""
    if size_bytes < 0:
        return "-" + describe_size(-size_bytes)
    if size_bytes % KB == 0 and len(format_size(size_bytes)) <= 7:
        return format_size(size_bytes)
    for name, factor in UNIT_BYTES.items():
        if abs(size_bytes) >= factor:
            return f"{size_bytes / factor:.1f}{name}"
    return f"{size_bytes}B"
