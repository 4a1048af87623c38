"""Checks on filter inputs, shared by the sizing filters.

Every check raises AnsibleFilterError with a sentence that names the key, the value
received and what is allowed, so a typo in an inventory fails loudly instead of
sizing a server from a default.
"""

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_units import parse_size

#: A SCRAM-SHA-256 verifier as PostgreSQL stores it (pg_authid.rolpassword, RFC 5803 layout):
#: SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, base64 parts (groups 1 to 4).
SCRAM_VERIFIER = (
    r"^SCRAM-SHA-256\$([0-9]+):([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2}):([A-Za-z0-9+/]+={0,2})\Z"
)


def check_mapping(value, what):
    """Raise unless ``value`` is a mapping."""
    if not isinstance(value, Mapping):
        raise AnsibleFilterError(f"{what} must be a mapping, got {type(value).__name__} {value!r}")
    return value


def check_keys(mapping, required, optional, what):
    """Raise on a missing required key or on a key that is neither required nor optional (typo guard)."""
    check_mapping(mapping, what)
    allowed = sorted(set(required) | set(optional))
    unknown = sorted(str(key) for key in mapping if key not in allowed)
    if unknown:
        raise AnsibleFilterError(
            f"{what} has unknown key(s) {', '.join(unknown)}; allowed keys are {', '.join(allowed)}"
        )
    missing = [key for key in required if mapping.get(key) is None]
    if missing:
        raise AnsibleFilterError(f"{what} needs the key(s) {', '.join(missing)}")
    return mapping


def as_int(value, key, minimum=None, maximum=None):
    """An integer (or a string of digits, as Jinja may render one) within [minimum, maximum].

    Booleans and floats are refused: ``True`` is not one CPU and ``2.5`` is not a connection count.
    """
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AnsibleFilterError(f"{key} must be an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise AnsibleFilterError(f"{key} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise AnsibleFilterError(f"{key} must be at most {maximum}, got {value}")
    return value


def as_choice(value, key, choices):
    """One of ``choices``."""
    if value not in choices:
        raise AnsibleFilterError(f"{key} {value!r} is not one of {', '.join(choices)}")
    return value


def as_size(value, key, minimum=0):
    """A size in bytes: an int, or a string such as '16GB' (see pg_units.parse_size)."""
    size = parse_size(value, "B", what=key)
    if size < minimum:
        raise AnsibleFilterError(f"{key} must be at least {minimum} bytes, got {value!r}")
    return size


def as_fraction(value, key):
    """A number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise AnsibleFilterError(f"{key} must be a number greater than 0 and at most 1, got {value!r}")
    return float(value)


def as_count_or_names(value, key):
    """A count given as an int, or as a list of distinct names (its length)."""
    if isinstance(value, (list, tuple)):
        names_ok = all(isinstance(name, str) and name for name in value)
        if not value or not names_ok or len(set(value)) != len(value):
            raise AnsibleFilterError(
                f"{key} must be a count of at least 1 or a non-empty list of distinct names, got {value!r}"
            )
        return len(value)
    return as_int(value, key, minimum=1)
