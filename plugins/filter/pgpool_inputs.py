"""What the pgpool role refuses before anything changes: one message per broken rule.

``pgpool_refusals`` takes the role's inputs (``__pgpool_inputs`` in the role's vars/main.yml:
each ``pgpool_<key>`` under ``<key>``) and returns the messages of every rule they break, each
naming the variable, the value it got and what is allowed; an empty list lets the role go on.
argument_specs already checked types; these rules cover what a type cannot say: names and
addresses that reach pgpool.conf, pool_hba.conf or pool_passwd, ports, ranges, the secrets that
must be set (their values are never repeated in a message), and sizes that cannot work.

Numbers convert the way Jinja's ``int`` filter does (a value given with -e is a string; what
does not convert is refused as not a number).
"""

import ipaddress
import json
import re

from ansible.errors import AnsibleFilterError

# Role and database names that reach pool_passwd ("name:AES...") and pgpool.conf unquoted-safe.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.$-]{0,62}\Z"
# Host names and addresses of backends and listen addresses (no quote, space or comma).
_HOST = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*\Z"
_SOCKET_DIR = r"^/[A-Za-z0-9_./-]*\Z"

# (key, minimum, maximum); None is no bound.
RANGES = (
    ("port", 1, 65535),
    ("num_init_children", 0, None),
    ("max_pool", 0, None),
    ("client_demand", 1, None),
    ("listen_backlog_multiplier", 0, None),
    ("reserved_connections", 0, None),
    ("health_check_period", 0, None),
    ("sr_check_period", 0, None),
    ("client_idle_limit", 0, None),
    ("nodes", 1, None),
)

INPUTS = (
    "backends", "users", "pool_key", "health_check_user", "health_check_password", "health_check_database",
    "listen_addresses", "socket_dir", "hba_sources", "cancel_headroom", "load_balance_mode", "allow_restart",
) + tuple(key for key, _low, _high in RANGES)


def _json(value):
    return json.dumps(value, default=str)


def _matches(pattern, value):
    return isinstance(value, str) and re.search(pattern, value) is not None


def _number(value):
    """Jinja's ``int`` of a value, or None when it is not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]+\s*", value):
        return int(value)
    return None


def ranges(inputs):
    out = []
    for key, low, high in RANGES:
        value = _number(inputs[key])
        allowed = f"an integer from {low}" + (f" to {high}" if high is not None else " up")
        if value is None or value < low or (high is not None and value > high):
            out.append(f"pgpool_{key} {_json(inputs[key])} is not allowed: it must be {allowed}.")
    children, reserved = _number(inputs["num_init_children"]), _number(inputs["reserved_connections"])
    if children and reserved is not None and reserved >= children:
        out.append(f"pgpool_reserved_connections {reserved} is not allowed: it must be below pgpool_num_init_children"
                   f" {children}, or pgpool-II refuses every client.")
    return out


def backends(inputs):
    entries = inputs["backends"]
    if not isinstance(entries, list) or not entries or not all(isinstance(entry, dict) for entry in entries):
        return [f"pgpool_backends {_json(entries)} is not allowed: it must list at least one backend server"
                " ({host: ..., port: ...}), the primary first."]
    out = []
    seen = set()
    for position, entry in enumerate(entries):
        host, port = entry.get("host"), entry.get("port", 5432)
        what = f"pgpool_backends[{position}]"
        if not _matches(_HOST, host):
            out.append(f"{what}.host {_json(host)} is not allowed: it must be an inventory hostname, a DNS name or an"
                       " address (letters, digits, . _ : -).")
        if _number(port) is None or not 1 <= _number(port) <= 65535:
            out.append(f"{what}.port {_json(port)} is not allowed: it must be an integer from 1 to 65535.")
        weight = entry.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            out.append(f"{what}.weight {_json(weight)} is not allowed: it must be a number of 0 or more.")
        for key, low in (("max_connections", 1), ("superuser_reserved_connections", 0),
                         ("reserved_connections", 0), ("other_demand", 0)):
            if key in entry and (_number(entry[key]) is None or _number(entry[key]) < low):
                out.append(f"{what}.{key} {_json(entry[key])} is not allowed: it must be an integer of {low} or more.")
        if (host, _json(port)) in seen:
            out.append(f"{what} {_json(host)}:{_json(port)} is not allowed: each backend may be listed once.")
        seen.add((host, _json(port)))
    return out


def users(inputs):
    entries = inputs["users"]
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        return [f"pgpool_users must be a list of {{name, password}} (got a {type(entries).__name__})."]
    out = []
    names = [entry.get("name") for entry in entries] + [inputs["health_check_user"]]
    for position, entry in enumerate(entries):
        name, password = entry.get("name"), entry.get("password")
        if not _matches(NAME_PATTERN, name):
            out.append(f"pgpool_users[{position}].name {_json(name)} is not allowed: it must be a role name"
                       " (letters, digits, _ . $ -; a letter or _ first; at most 63 characters).")
        if not isinstance(password, str) or not password or "\n" in password or len(password) > 1024:
            out.append(f"pgpool_users[{position}].password (for {_json(name)}) is not allowed: it must be a non-empty"
                       " string of one line (keep it in vault).")
    duplicates = sorted({str(name) for name in names if names.count(name) > 1})
    if duplicates:
        out.append(f"pgpool_users {_json(duplicates)} is not allowed: each user may be listed once, and not as"
                   " pgpool_health_check_user too.")
    return out


def secrets(inputs):
    out = []
    key = inputs["pool_key"]
    if not isinstance(key, str) or not key.strip() or "\n" in key:
        out.append("pgpool_pool_key is not allowed empty or over several lines: set the key pool_passwd is encrypted"
                   " with (one line, from vault).")
    password = inputs["health_check_password"]
    if not isinstance(password, str) or not password or "\n" in password:
        out.append(f"pgpool_health_check_password (for {_json(inputs['health_check_user'])}) is not allowed empty or"
                   " over several lines: set it (from vault) to the user's password on the backends.")
    return out


def names(inputs):
    out = []
    for key in ("health_check_user", "health_check_database"):
        if not _matches(NAME_PATTERN, inputs[key]):
            out.append(f"pgpool_{key} {_json(inputs[key])} is not allowed: it must be a PostgreSQL name (letters,"
                       " digits, _ . $ -; a letter or _ first).")
    listen = inputs["listen_addresses"]
    if not isinstance(listen, str) or not all(part == "*" or _matches(_HOST, part)
                                              for part in re.split(r"\s*,\s*", listen) if listen.strip()):
        out.append(f"pgpool_listen_addresses {_json(listen)} is not allowed: it must be '*', '' or addresses"
                   " separated by commas.")
    if not _matches(_SOCKET_DIR, inputs["socket_dir"]):
        out.append(f"pgpool_socket_dir {_json(inputs['socket_dir'])} is not allowed: it must be an absolute path.")
    sources = inputs["hba_sources"]
    for source in sources if isinstance(sources, list) else [sources]:
        try:
            ipaddress.ip_network(str(source), strict=False)
            valid = isinstance(source, str) and "/" in source
        except ValueError:
            valid = False
        if not valid:
            out.append(f"pgpool_hba_sources entry {_json(source)} is not allowed: it must be a network in CIDR"
                       " notation such as 10.0.0.0/8.")
    return out


RULES = (backends, users, secrets, names, ranges)


def pgpool_refusals(inputs):
    """The messages of every rule the inputs break, in the order of RULES; [] when none.

    ``inputs``: the role's variables without their ``pgpool_`` prefix (INPUTS names those read).
    """
    if not isinstance(inputs, dict):
        raise AnsibleFilterError(f"pgpool_refusals: inputs must be a dict of the role's variables, got {type(inputs)}")
    missing = [key for key in INPUTS if key not in inputs]
    if missing:
        raise AnsibleFilterError(f"pgpool_refusals: inputs lack {', '.join(missing)}")
    return [message for rule in RULES for message in rule(inputs)]


class FilterModule:
    """Checks of the pgpool role's inputs."""

    def filters(self):
        return {"pgpool_refusals": pgpool_refusals}
