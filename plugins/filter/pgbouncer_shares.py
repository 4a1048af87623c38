"""The pgbouncer_shares filter: each application's share as PgBouncer settings, for the installed version.

What each version takes (PgBouncer's pgbouncer.5 of 1.18, 1.24 and 1.26, its src/loader.c and
src/client.c, and runs of the Debian packages in the lab images):

* ``max_user_connections`` on a ``[users]`` line, every version: the server connections of one
  user over all its pools in one process. pgbouncer_tune sizes it (``max_user_connections``).
* ``max_user_client_connections`` (``[users]``) and ``max_db_client_connections`` (a
  ``[databases]`` entry) from 1.24 (NEWS 1.24.0, #1137 and #1138): the client connections of a
  user, or of a database entry, in one process. A client over the limit gets ``FATAL: client
  connections exceeded (max_user_client_connections)`` (or ``(max_db_client_connections)``).
  1.18 refuses the whole file on either ("unrecognized user parameter",
  "unrecognized connection parameter"), so they are left out there and named in a warning.
* A user's own settings (pgbouncer_features' ``user_settings``) join its line. A per-user
  ``pool_size`` replaces the entry's for that user's pools (``pool_pool_size`` in src/server.c),
  and so does ``reserve_pool_size``: the budget counts every pool at its entry's size, so they
  may only shrink a pool (at most the smallest entry's), or the server would get more
  connections than planned. Larger ones are refused.
* Before 1.23, a user on a ``[users]`` line is a known user with an empty password
  (``parse_user`` calls ``add_user(name, "")``), so auth_query is never run for it and every
  login fails with "SASL authentication failed" (seen on 1.18). 1.23 marks such users'
  passwords dynamic and looks them up (#1052). In auth_query mode before 1.23 only the auth
  user, which has no password anyway, gets a line; the users' server share is then held by
  their pools alone (pool_size + reserve_pool, max_db_connections), which is the same number,
  so this needs no warning (the file names them in a comment).
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_features import USERS_WITH_AUTH_QUERY_VERSION, version_tuple
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_sizing import user_shares

#: max_user_client_connections and max_db_client_connections exist from this version on.
CLIENT_LIMITS_VERSION = (1, 24)
#: The per-user settings that size a user's pools, and the entry setting each may not exceed.
POOL_SETTINGS = ("pool_size", "reserve_pool_size")


def _limits(limits, variable):
    if not isinstance(limits, dict) or not all(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1 for value in limits.values()
    ):
        raise AnsibleFilterError(f"pgbouncer_shares: {variable} must map names to positive integers, got {limits!r}")
    return dict(sorted(limits.items()))


def pgbouncer_shares(sizing, databases, version, user_client_limits, database_client_limits, auth_user, host,
                     user_settings=None):
    """The [users] lines, the [databases] additions and one warning for what this version cannot enforce.

    ``sizing``: the result of pgbouncer_tune; ``databases``: the entries of its spec (the role's
    pgbouncer_databases: the user names); ``version``: the installed PgBouncer (pgbouncer_info);
    ``user_client_limits`` and ``database_client_limits``: the role's
    ``pgbouncer_user_client_limits`` and ``pgbouncer_database_client_limits`` (pgbouncer_refusals
    checked them); ``auth_user``: the auth_query lookup user, empty in userlist mode; ``host``:
    named in the warning; ``user_settings``: pgbouncer_features' ``user_settings``.
    Returns ``users`` ({user: {setting: value}}, sorted), ``databases``
    ({entry: {setting: value}}), ``client_limits`` (this version takes the client settings),
    ``unlisted_users`` (named users left out of [users]), ``warning`` (one message, or empty)
    and ``refusals`` (per-user pool settings above the entries' pools).
    """
    if not isinstance(sizing, dict) or not isinstance(sizing.get("databases"), list):
        raise AnsibleFilterError(f"pgbouncer_shares: sizing must be the result of pgbouncer_tune, got {sizing!r}")
    user_client_limits = _limits(user_client_limits, "pgbouncer_user_client_limits")
    database_client_limits = _limits(database_client_limits, "pgbouncer_database_client_limits")
    # Not installed yet (check mode) counts as the oldest.
    running = version_tuple(version) or (0, 0)
    client_limits = running >= CLIENT_LIMITS_VERSION
    shares = user_shares(sizing["databases"], databases, auth_user or None)
    # Before 1.23 only the auth user may have a line in auth_query mode (module docstring).
    unlisted = sorted(user for user in shares if auth_user and running < USERS_WITH_AUTH_QUERY_VERSION
                      and user != auth_user)
    users = {user: {"max_user_connections": share} for user, share in shares.items() if user not in unlisted}
    entries = {entry["name"]: {} for entry in sizing["databases"]}
    if client_limits:
        for user, limit in user_client_limits.items():
            users.setdefault(user, {})["max_user_client_connections"] = limit
        for name, limit in database_client_limits.items():
            entries[name]["max_db_client_connections"] = limit

    refusals = []
    smallest = {key: min((int(entry[key]) for entry in sizing["databases"]), default=0) for key in POOL_SETTINGS}
    for user, settings in (user_settings or {}).items():
        for key in POOL_SETTINGS:
            if key in settings and int(settings[key]) > smallest[key]:
                refusals.append(
                    f"pgbouncer_user_settings \"{user}\" {key} {settings[key]}: above {smallest[key]}, the smallest {key} of"
                    f" the database entries on {host}. The budget counts every pool at its entry's size, so a larger"
                    f" per-user {key} would open more server connections than planned; raise the entries' pools"
                    " (pgbouncer_databases, the allowance) or set at most that.")
        users.setdefault(user, {}).update(settings)

    # One message for both variables: the version, the setting it lacks, who is not held, the variable.
    missing = []
    if not client_limits and user_client_limits:
        missing.append(f"no max_user_client_connections (1.24+): the client share of users {', '.join(user_client_limits)}"
                       " (pgbouncer_user_client_limits) is not enforced here")
    if not client_limits and database_client_limits:
        missing.append(f"no max_db_client_connections (1.24+): the client share of databases"
                       f" {', '.join(database_client_limits)} (pgbouncer_database_client_limits) is not enforced here")
    warning = ""
    if missing:
        warning = f"{host}: PgBouncer {version or '(not installed)'} has " + "; ".join(missing) + "; the server side still is."
    return {
        "users": dict(sorted(users.items())),
        "databases": entries,
        "client_limits": client_limits,
        "unlisted_users": unlisted,
        "warning": warning,
        "refusals": refusals,
    }


class FilterModule:
    """Application shares as PgBouncer settings."""

    def filters(self):
        return {"pgbouncer_shares": pgbouncer_shares}
