"""The pgbouncer_features filter: the settings that depend on the installed PgBouncer version.

Which version brought what (PgBouncer's NEWS.md; the Debian packages: 12 has 1.18, 13 has 1.24,
forky 1.26):

* ``[peers]`` and ``peer_id``, 1.19: cancel requests reach the process that runs the query. Before
  it, several processes on one port (so_reuseport) cancel the wrong query or none, so 1.18 runs one.
* ``max_prepared_statements``, 1.21 ("The one with prepared statements"): PgBouncer tracks
  protocol-level prepared statements and prepares them again on whichever server connection a
  transaction gets. Its default is 0 (off) before 1.24 and 200 from 1.24 (NEWS 1.24.0). Before
  1.21, a driver that prepares statements (pgbench -M prepared, psycopg 3's prepare_threshold,
  JDBC's prepareThreshold, pgx's default mode) fails in transaction pooling with "prepared
  statement ... does not exist" as soon as its next transaction lands on another server connection.
* SIGTERM waits for the clients to leave (rolling restarts), 1.23 (#902).
* ``transaction_timeout`` and ``query_wait_notify``, 1.25 (#1242, #1264).
* ``RELOAD`` on the admin console answers an error when the file did not load, 1.25 (#1231);
  before it, RELOAD and SIGHUP answer success and run defaults from the bad line on.
* ``query_timeout`` and ``client_idle_timeout``: every version the role supports.
* A user's own settings on its ``[users]`` line (``pgbouncer_user_settings``, USER_SETTINGS):
  ``pool_mode`` on every version, ``pool_size`` from 1.23 (#1049), ``reserve_pool_size``,
  ``query_timeout``, ``idle_transaction_timeout`` and ``client_idle_timeout`` from 1.24
  (#1180, #1228, #1188, #1189), ``transaction_timeout`` from 1.25 (#1242) and
  ``query_wait_timeout`` from 1.26 (#1449). An unknown key fails the whole file
  ("unrecognized user parameter", src/loader.c), so each is refused before the version has it.

``pgbouncer_extra_settings`` passes any other [pgbouncer] setting through; the candidate check
(a throwaway PgBouncer on the file) refuses a name or value the installed version does not take.
"""

import json
import re

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_sizing import POOL_MODES

PEERS_VERSION = (1, 19)
PREPARED_STATEMENTS_VERSION = (1, 21)
ROLLING_RESTART_VERSION = (1, 23)
CONSOLE_RELOAD_VERSION = (1, 25)

#: max_prepared_statements written when the variable is unset: PgBouncer 1.24's own default
#: ("200 ... a good starting point", pgbouncer.org config), so 1.21 to 1.23 pool drivers that prepare too.
DEFAULT_MAX_PREPARED_STATEMENTS = 200

#: Settings of the role (variable pgbouncer_<setting>) that only some versions have: the first
#: version, and the value that means what a version without it does (so it may stay unwritten there).
GATED = {
    "max_prepared_statements": (PREPARED_STATEMENTS_VERSION, 0),
    "transaction_timeout": (CONSOLE_RELOAD_VERSION, 0),
    "query_wait_notify": (CONSOLE_RELOAD_VERSION, 0),
}
#: The settings a [users] line may hold (pgbouncer_user_settings) and the first version with each;
#: None: every version the role supports. The two limits are the shares' (pgbouncer_shares).
USER_SETTINGS = {
    "pool_mode": None,
    "pool_size": (1, 23),
    "reserve_pool_size": (1, 24),
    "query_timeout": (1, 24),
    "idle_transaction_timeout": (1, 24),
    "client_idle_timeout": (1, 24),
    "transaction_timeout": (1, 25),
    "query_wait_timeout": (1, 26),
}
USER_SHARE_SETTINGS = ("max_user_connections", "max_user_client_connections")
#: Before 1.23 a [users] line stops auth_query for that user (pgbouncer_shares).
USERS_WITH_AUTH_QUERY_VERSION = (1, 23)
#: Settings of the role every supported version has.
UNGATED = ("query_timeout", "client_idle_timeout")
INPUTS = tuple(GATED) + UNGATED + ("extra_settings", "user_settings", "auth_mode", "processes")

_SETTING_NAME = re.compile(r"^[a-z][a-z0-9_]*\Z")
# A PostgreSQL role name as a [users] key: PgBouncer reads the key up to "=" or a space.
_USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\Z")
# A value reaches pgbouncer.ini as it is: one line, no comment start, nothing a shell or parser cuts.
_SETTING_VALUE = re.compile(r"^[^\n\r\x00;#]*\Z")
_WHAT_DRIVERS_DO = "turn off the drivers' protocol-level prepared statements (README of the pgbouncer role, Prepared statements)"


def version_tuple(version):
    """(major, minor) of ``1.24.1``; None when PgBouncer is not installed yet (check mode on a new host)."""
    if version is None or version == "":
        return None
    match = re.match(r"^([0-9]+)\.([0-9]+)", str(version))
    if not match:
        raise AnsibleFilterError(f"the PgBouncer version must look like 1.24.1, got {version!r}")
    return int(match.group(1)), int(match.group(2))


def _text(version):
    return ".".join(map(str, version))


def _int_or_none(value, variable, refusals):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        refusals.append(f"{variable} must be a whole number of 0 or more (got {json.dumps(value)}).")
        return None
    return int(value)


def _extra_settings(extra, managed, refusals):
    if not isinstance(extra, dict):
        refusals.append(f"pgbouncer_extra_settings must be a dict of [pgbouncer] setting to value (got {json.dumps(extra)}).")
        return {}
    out = {}
    for key, value in extra.items():
        if not isinstance(key, str) or not _SETTING_NAME.match(key):
            refusals.append(f"pgbouncer_extra_settings key {json.dumps(key)} is not a PgBouncer setting name"
                            " (lower-case letters, digits and _).")
        elif key in managed:
            refusals.append(f"pgbouncer_extra_settings {key}: the role writes {key} itself, from its own variables"
                            " (roles/pgbouncer/README.md); set it there.")
        elif isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float)) or (isinstance(value, str) and _SETTING_VALUE.match(value)):
            out[key] = value
        else:
            refusals.append(f"pgbouncer_extra_settings {key}: {json.dumps(value)} is not allowed: a number, true/false or"
                            " one line of text without ; or #.")
    return dict(sorted(out.items()))


def _user_settings(given, version, running, host, auth_mode, refusals):
    """The [users] settings of pgbouncer_user_settings this version takes, {user: {setting: value}}, sorted."""
    if not isinstance(given, dict) or any(not isinstance(settings, dict) for settings in given.values()):
        refusals.append(f"pgbouncer_user_settings must be a dict of user to a dict of its settings (got {json.dumps(given)}).")
        return {}
    out = {}
    for user, settings in given.items():
        variable = f"pgbouncer_user_settings {json.dumps(user)}"
        if not isinstance(user, str) or not _USER_NAME.match(user):
            refusals.append(f"{variable}: not a role name PgBouncer can read as a [users] key (letters, digits, _ . -).")
            continue
        if (settings and auth_mode == "auth_query" and running is not None
                and running < USERS_WITH_AUTH_QUERY_VERSION):
            refusals.append(
                f"{variable}: PgBouncer {version} on {host} stops auth_query logins of a user with a [users] line (before"
                f" {_text(USERS_WITH_AUTH_QUERY_VERSION)}); use pgbouncer_auth_mode userlist, or leave the user out.")
            continue
        for key, value in settings.items():
            if key in USER_SHARE_SETTINGS:
                refusals.append(f"{variable} {key}: the role sets {key} from the application's share (pgbouncer_shares:"
                                " the sizing engine and pgbouncer_user_client_limits); set it there.")
            elif key not in USER_SETTINGS:
                refusals.append(f"{variable} {json.dumps(key)}: not a [users] setting; allowed: {', '.join(USER_SETTINGS)}.")
            elif running is not None and USER_SETTINGS[key] is not None and running < USER_SETTINGS[key]:
                refusals.append(f"{variable} {key}: PgBouncer {version} on {host} has no per-user {key} (it needs"
                                f" {_text(USER_SETTINGS[key])} or later), and the file would not load with it.")
            elif key == "pool_mode":
                if value in POOL_MODES:
                    out.setdefault(user, {})[key] = value
                else:
                    refusals.append(f"{variable} pool_mode {json.dumps(value)}: allowed: {', '.join(POOL_MODES)}.")
            else:
                number = _int_or_none(value, f"{variable} {key}", refusals)
                if number is not None:
                    out.setdefault(user, {})[key] = number
    return {user: dict(sorted(settings.items())) for user, settings in sorted(out.items())}


def pgbouncer_features(inputs, version, host, managed):
    """What the installed PgBouncer takes of the version-dependent inputs, and what it refuses.

    ``inputs``: the role's ``max_prepared_statements``, ``transaction_timeout``,
    ``query_wait_notify``, ``query_timeout``, ``client_idle_timeout``, ``extra_settings``,
    ``user_settings``, ``auth_mode`` and ``processes`` (each ``pgbouncer_<key>``; ``max_prepared_statements`` and ``query_wait_notify`` may be
    null: PgBouncer's own choice, see DEFAULT_MAX_PREPARED_STATEMENTS); ``version``: the
    installed PgBouncer (pgbouncer_info), None before it is installed (then nothing is refused
    and only settings every version has are written); ``host``: named in the messages;
    ``managed``: the [pgbouncer] settings the role writes itself (not passed through).

    Returns ``settings`` (for [pgbouncer], in this order: the role's, then the extra ones),
    ``user_settings`` (for [users]: {user: {setting: value}}; pgbouncer_shares adds the shares),
    ``refusals`` (messages; each names the variable, the value and what is allowed),
    ``peers``, ``rolling_restart`` and ``console_reload`` (what this version can do), and
    ``version`` (the text given).
    """
    if not isinstance(inputs, dict) or any(key not in inputs for key in INPUTS):
        raise AnsibleFilterError(f"pgbouncer_features: inputs must hold {', '.join(INPUTS)}, got {inputs!r}")
    running = version_tuple(version)
    known = running is not None
    refusals = []
    settings = {}
    for key in UNGATED:
        value = _int_or_none(inputs[key], f"pgbouncer_{key}", refusals)
        settings[key] = 0 if value is None else value
    for key, (first, absent) in GATED.items():
        value = _int_or_none(inputs[key], f"pgbouncer_{key}", refusals)
        if key == "max_prepared_statements" and value is None:
            value = DEFAULT_MAX_PREPARED_STATEMENTS if known and running >= first else absent
        if known and running >= first:
            if value is not None:
                settings[key] = value
        elif known and value not in (None, absent):
            advice = _WHAT_DRIVERS_DO if key == "max_prepared_statements" else f"leave pgbouncer_{key} at {absent}"
            refusals.append(
                f"pgbouncer_{key} {value}: PgBouncer {version} on {host} has no {key} (it needs {_text(first)} or later);"
                f" set pgbouncer_{key}: {absent} and {advice}, or install PgBouncer {_text(first)}+"
                " (pgbouncer_apt_repository)."
            )
    # PgBouncer's janitor times a server connection's transaction from its client's xact_start
    # (src/janitor.c: age_transaction = now - server->link->xact_start). An auth_query lookup's
    # client is still logging in and has none (0), so every lookup still running at a janitor
    # tick is closed with "transaction timeout" and its client fails to log in ("SASL
    # authentication failed"). Seen on 1.26.1 in molecule/pgbouncer: 1000 pgbench logins,
    # "bench/pgbouncer_auth@unix:5432 closing because: transaction timeout (age=5s)".
    if inputs["auth_mode"] == "auth_query" and settings.get("transaction_timeout"):
        refusals.append(
            f"pgbouncer_transaction_timeout {settings['transaction_timeout']} with pgbouncer_auth_mode auth_query: PgBouncer"
            " times an auth_query lookup's transaction from 0 (the client is still logging in; src/janitor.c), so lookups"
            " that meet a janitor tick are closed with \"transaction timeout\" and those logins fail (seen on 1.26.1 under"
            " 1000 logins). Use pgbouncer_auth_mode userlist, or leave pgbouncer_transaction_timeout at 0."
        )
    processes = _int_or_none(inputs["processes"], "pgbouncer_processes", refusals) or 0
    if known and running < PEERS_VERSION and processes > 1:
        refusals.append(
            f"pgbouncer_processes {processes}: PgBouncer {version} has no [peers] ({_text(PEERS_VERSION)}+), so with several"
            " processes on one port a cancel request can reach a process that does not run the query; set 0 or 1."
        )
    managed = set(managed) | set(GATED) | set(UNGATED)
    settings.update(_extra_settings(inputs["extra_settings"], managed, refusals))
    user_settings = _user_settings(inputs["user_settings"], version, running, host, inputs["auth_mode"], refusals)
    return {
        "settings": settings,
        "user_settings": user_settings,
        "refusals": refusals,
        "peers": known and running >= PEERS_VERSION,
        "rolling_restart": known and running >= ROLLING_RESTART_VERSION,
        "console_reload": known and running >= CONSOLE_RELOAD_VERSION,
        "version": version,
    }


class FilterModule:
    """Version-dependent PgBouncer settings."""

    def filters(self):
        return {"pgbouncer_features": pgbouncer_features}
