"""What the pgbouncer role refuses before anything changes: one message per broken rule.

``pgbouncer_refusals`` takes the role's inputs (``__pgbouncer_inputs`` in the role's
vars/main.yml: each ``pgbouncer_<key>`` under ``<key>``) and returns the messages of every rule
they break, each naming the variable and the value it got; an empty list lets the role go on.
argument_specs already checked types and choices; these rules cover what a type cannot say:
names and paths that reach a config file unquoted, ports, minimums, TLS beyond loopback, and
what each auth mode needs from the inventory, what a server outside the inventory needs (its
users' verifiers, TLS verify-full), and client shares for users and entries that exist.

Numbers convert the way Jinja's ``int`` filter does (a value given with -e may be a string;
what does not convert counts as 0), so the rules refuse what the role's asserts refused.
"""

import json
import re

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_inputs import SCRAM_VERIFIER

# Names PgBouncer, PostgreSQL roles and databases may have here: no quote, space or control
# character can reach a config file.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.$-]{0,62}\Z"
# Names clients ask PgBouncer for: the [databases] keys PgBouncer 1.18 reads unquoted.
DATABASE_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z"
# An inventory hostname is checked apart; otherwise an absolute socket directory, a DNS name or an address.
_HOST = r"^(/[A-Za-z0-9_./-]+|[A-Za-z0-9][A-Za-z0-9_.-]*|[0-9A-Fa-f:.]+)\Z"
_LISTEN_ADDR = r"^(\*|[A-Za-z0-9_.:-]+( *, *[A-Za-z0-9_.:-]+)*)?\Z"
_SOCKET_DIR = r"^/[A-Za-z0-9_./-]*\Z"
_PLAIN_PATH = r"^[A-Za-z0-9_./-]*\Z"
_STARTUP_PARAMETER = r"^[a-z_]+\Z"
_HBA_SOURCE = r"^([0-9A-Fa-f:.]+/[0-9]{1,3})?\Z"
_LOOPBACK = r"^(127[.][0-9.]+|::1|localhost)\Z"
_CLIENT_TLS_MODES = ("require", "verify-ca", "verify-full")

# The sizes and timeouts that may not go below a minimum: (key, minimum).
MINIMUMS = (
    ("max_client_conn", 1),
    ("server_connection_allowance", 0),
    ("server_cpus", 0),
    ("default_pool_size", 0),
    ("reserve_pool_size", 0),
    ("processes", 0),
    ("expected_tps", 0),
    ("server_idle_timeout", 0),
    ("query_wait_timeout", 0),
    ("idle_transaction_timeout", 0),
    ("server_lifetime", 0),
    ("nofile_limit", 0),
    ("query_timeout", 0),
    ("client_idle_timeout", 0),
    ("transaction_timeout", 0),
    ("query_wait_notify", 0),
    ("max_prepared_statements", 0),
    ("drain_timeout", 1),
)

INPUTS = (
    "databases", "listen_addr", "listen_port", "unix_socket_dir",
    "client_tls_sslmode", "client_tls_cert_file", "client_tls_key_file", "client_tls_ca_file",
    "server_tls_sslmode", "server_tls_cert_file", "server_tls_key_file", "server_tls_ca_file",
    "external_servers", "user_verifiers",
    "admin_users", "stats_users", "auth_user", "auth_schema", "auth_mode", "pool_mode",
    "ignore_startup_parameters", "hba_source", "user_client_limits", "database_client_limits",
) + tuple(key for key, _minimum in MINIMUMS)


def _json(value):
    return json.dumps(value)


def _matches(pattern, value):
    return isinstance(value, str) and re.search(pattern, value) is not None


def _int(value):
    """Jinja's ``int`` filter: a number, a numeric string, else 0."""
    if isinstance(value, bool):
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError, OverflowError):
            return 0


def _is_integer(value):
    """Jinja's ``integer`` test: an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _databases(inputs):
    databases = inputs["databases"]
    if not isinstance(databases, list) or not all(isinstance(db, dict) for db in databases):
        return []
    return databases


def database_list(inputs, host, known_hosts):
    """At least one database, each name once (ignoring case, like Jinja's ``unique``)."""
    databases = _databases(inputs)
    names = [db.get("name") for db in databases]
    if databases and len({_json(n.lower() if isinstance(n, str) else n) for n in names}) == len(names):
        return []
    return [f"pgbouncer_databases must list at least one database, each name once (got {_json(names)})."]


def database_entries(inputs, host, known_hosts):
    """Each entry: a key and a dbname that write unquoted, a server that can be reached, sizes in range."""
    out = []
    for db in _databases(inputs):
        server = db.get("host", host)
        users = db.get("users", 1)
        allowed = (
            _matches(DATABASE_KEY_PATTERN, db.get("name"))
            and db.get("name") != "pgbouncer"
            and _matches(NAME_PATTERN, db.get("dbname", db.get("name")))
            and (server in known_hosts or _matches(_HOST, server))
            and 1 <= _int(db.get("port", 5432)) <= 65535
            and (_is_integer(users) or (isinstance(users, list) and all(_matches(NAME_PATTERN, u) for u in users)))
            and _int(db.get("pool_size", 1)) >= 1
            and _int(db.get("reserve_pool_size", 0)) >= 0
            and _int(db.get("max_db_connections", 0)) >= 0
        )
        if not allowed:
            out.append(
                f"pgbouncer_databases entry {_json(db)} is not allowed: name must match {DATABASE_KEY_PATTERN} and not"
                f' be "pgbouncer" (the admin console), dbname {NAME_PATTERN}; host must be an inventory hostname, an'
                " address or an absolute socket directory; port 1 to 65535; users a count or a list of names matching"
                " the same pattern; pool_size at least 1, reserve_pool_size and max_db_connections at least 0."
            )
    return out


def listen(inputs, host, known_hosts):
    """An address list PgBouncer can parse, a port, an absolute socket directory."""
    addr, port, socket_dir = inputs["listen_addr"], inputs["listen_port"], inputs["unix_socket_dir"]
    if _matches(_LISTEN_ADDR, addr) and 1 <= _int(port) <= 65535 and _matches(_SOCKET_DIR, socket_dir):
        return []
    return [
        f'pgbouncer_listen_addr must be empty, "*" or a comma-separated list of addresses (got {_json(addr)}),'
        f" pgbouncer_listen_port 1 to 65535 (got {_json(port)}), pgbouncer_unix_socket_dir an absolute path of"
        f" letters, digits and _ . / - (got {_json(socket_dir)})."
    ]


def client_tls_beyond_loopback(inputs, host, known_hosts):
    """Passwords travel inside the SCRAM exchange, but queries and results do not: beyond loopback, TLS."""
    addr, sslmode = inputs["listen_addr"], inputs["client_tls_sslmode"]
    if not isinstance(addr, str):
        return []  # listen() refuses it
    beyond = [a for a in (part.strip() for part in addr.split(",")) if a and not _matches(_LOOPBACK, a)]
    if not beyond or sslmode in _CLIENT_TLS_MODES:
        return []
    return [
        f"pgbouncer_listen_addr {_json(addr)} listens beyond loopback on {', '.join(beyond)}, so"
        f" pgbouncer_client_tls_sslmode must be require, verify-ca or verify-full (got {_json(sslmode)}); or listen"
        " on 127.0.0.1, ::1 or the Unix socket only."
    ]


def client_tls_files(inputs, host, known_hosts):
    """Client TLS needs a certificate and a key; every client TLS file is a plain path."""
    sslmode, cert, key = inputs["client_tls_sslmode"], inputs["client_tls_cert_file"], inputs["client_tls_key_file"]
    files = (cert, key, inputs["client_tls_ca_file"])
    if (sslmode in ("", "disable") or (cert != "" and key != "")) and all(_matches(_PLAIN_PATH, f) for f in files):
        return []
    return [
        f"pgbouncer_client_tls_sslmode {_json(sslmode)} needs pgbouncer_client_tls_cert_file ({_json(cert)}) and"
        f" pgbouncer_client_tls_key_file ({_json(key)}); the pgbouncer_client_tls_*_file values must be plain paths."
    ]


def minimums(inputs, host, known_hosts):
    """No negative size or timeout, and at least one client."""
    return [
        f"pgbouncer_{key} must be at least {minimum} (got {_json(inputs[key])})."
        for key, minimum in MINIMUMS
        if _int(inputs[key]) < minimum
    ]


def names(inputs, host, known_hosts):
    """User, role, schema and startup parameter names, server TLS paths and the hba source that write safely."""
    admin, stats, auth_user, schema = (inputs[k] for k in ("admin_users", "stats_users", "auth_user", "auth_schema"))
    parameters, source = inputs["ignore_startup_parameters"], inputs["hba_source"]
    roles = [*(admin if isinstance(admin, list) else [admin]), *(stats if isinstance(stats, list) else [stats]),
             auth_user, schema]
    files = (inputs["server_tls_cert_file"], inputs["server_tls_key_file"], inputs["server_tls_ca_file"])
    if (
        all(_matches(NAME_PATTERN, name) for name in roles)
        and isinstance(parameters, list) and all(_matches(_STARTUP_PARAMETER, p) for p in parameters)
        and all(_matches(_PLAIN_PATH, f) for f in files)
        and _matches(_HBA_SOURCE, source)
    ):
        return []
    return [
        f"pgbouncer_admin_users {_json(admin)}, pgbouncer_stats_users {_json(stats)}, pgbouncer_auth_user"
        f" {_json(auth_user)} and pgbouncer_auth_schema {_json(schema)} must match {NAME_PATTERN};"
        f" pgbouncer_ignore_startup_parameters {_json(parameters)} lower-case names; pgbouncer_server_tls_*_file"
        f" plain paths; pgbouncer_hba_source empty or an address/prefix (got {_json(source)})."
    ]


def _external(inputs, db):
    """The name of the server outside the inventory an entry reaches (by name or address), else None."""
    servers = inputs["external_servers"] if isinstance(inputs["external_servers"], dict) else {}
    server = db.get("host")
    for name, declared in servers.items():
        if server == name or (isinstance(declared, dict) and server == declared.get("address")):
            return name
    return None


def _reachable(db, host, known_hosts):
    """The entry's server is an inventory host, or a local socket directory."""
    return db.get("host", host) in known_hosts or _matches(r"^/", db.get("host", ""))


def userlist_mode(inputs, host, known_hosts):
    """The userlist copies each user's SCRAM verifier from its server: named users on servers the role reaches."""
    if inputs["auth_mode"] != "userlist":
        return []
    return [
        f"pgbouncer_auth_mode userlist copies each user's SCRAM verifier from its server, so pgbouncer_databases"
        f" entry {_json(db.get('name'))} needs users as a list of names (got {_json(db.get('users'))}) and host an"
        f" inventory hostname or a local socket directory (got {_json(db.get('host', host))})."
        for db in _databases(inputs)
        if _external(inputs, db) is None and (_is_integer(db.get("users")) or not _reachable(db, host, known_hosts))
    ]


def auth_query_over_tcp(inputs, host, known_hosts):
    """The auth user has no password, so over TCP it logs in with a client certificate."""
    if inputs["auth_mode"] != "auth_query" or (inputs["server_tls_cert_file"] != ""
                                               and inputs["server_tls_key_file"] != ""):
        return []
    return [
        f"pgbouncer_databases entry {_json(db.get('name'))} reaches its server over TCP (host {_json(db['host'])})."
        f" In auth_query mode the auth user {_json(inputs['auth_user'])} has no password (a SCRAM verifier cannot log"
        " in to a server, and a plain-text password is not stored), so it logs in with a client certificate: set"
        " pgbouncer_server_tls_cert_file and pgbouncer_server_tls_key_file (certificate CN ="
        f" {inputs['auth_user']})."
        for db in _databases(inputs)
        if db.get("host", host) != host and not _matches(r"^/", db.get("host", "")) and _external(inputs, db) is None
    ]


def outside_the_inventory(inputs, host, known_hosts):
    """A server outside the inventory is not prepared by the role: its users' verifiers are given, TLS verifies it."""
    if not isinstance(inputs["external_servers"], dict):
        return [f"pgbouncer_external_servers (headroom_external_servers) must be a dict of server name to its declaration"
                f" (got {_json(inputs['external_servers'])})."]
    out = []
    verifiers = inputs["user_verifiers"] if isinstance(inputs["user_verifiers"], dict) else {}
    for db in _databases(inputs):
        name = _external(inputs, db)
        if name is None:
            continue
        users = db.get("users")
        missing = [user for user in users if user not in verifiers] if isinstance(users, list) else None
        if missing is None or missing:
            out.append(
                f"pgbouncer_databases entry {_json(db.get('name'))} reaches {name}, a server outside the inventory, where"
                " the role reads and prepares nothing: list its users by name and give each its SCRAM verifier (as the"
                " server stores it) in pgbouncer_user_verifiers, in either auth mode (got users"
                f" {_json(users)}{'' if missing is None else ', no verifier for ' + ', '.join(map(str, missing))})."
            )
        if inputs["server_tls_sslmode"] != "verify-full" or inputs["server_tls_ca_file"] == "":
            out.append(
                f"pgbouncer_databases entry {_json(db.get('name'))} reaches {name}, a server outside the inventory, over"
                " the network: set pgbouncer_server_tls_sslmode verify-full and pgbouncer_server_tls_ca_file to the CA"
                f" that signed its certificate (got sslmode {_json(inputs['server_tls_sslmode'])}, CA file"
                f" {_json(inputs['server_tls_ca_file'])})."
            )
    return out


def user_verifiers(inputs, host, known_hosts):
    """Given verifiers: user names that write unquoted, SCRAM-SHA-256 verifiers (never a password)."""
    verifiers = inputs["user_verifiers"]
    if not isinstance(verifiers, dict):
        return [f"pgbouncer_user_verifiers must be a dict of user name to SCRAM-SHA-256 verifier (got a"
                f" {type(verifiers).__name__})."]
    # The value is a secret: the message names the user and the rule, never the value.
    return [
        f"pgbouncer_user_verifiers entry {_json(user)} is not allowed: the user must match {NAME_PATTERN} and the value"
        " be a SCRAM-SHA-256 verifier as PostgreSQL stores it (SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>),"
        " not a password or an md5 hash."
        for user, verifier in verifiers.items()
        if not _matches(NAME_PATTERN, user) or not _matches(SCRAM_VERIFIER, verifier)
    ]


def _named_users(inputs):
    return sorted({user for db in _databases(inputs) if isinstance(db.get("users"), list)
                   for user in db["users"] if isinstance(user, str)})


def client_limits(inputs, host, known_hosts):
    """Each client share is a positive integer for a user named in, or an entry of, pgbouncer_databases."""
    out = []
    users = _named_users(inputs)
    entries = [db.get("name") for db in _databases(inputs)]
    for key, what, allowed in (("user_client_limits", "user named in a pgbouncer_databases entry's users", users),
                               ("database_client_limits", "pgbouncer_databases entry name", entries)):
        limits = inputs[key]
        if not isinstance(limits, dict):
            out.append(f"pgbouncer_{key} must be a dict of {what} to the most client connections it may hold in"
                       f" one PgBouncer process, a positive integer (got {_json(limits)}).")
            continue
        for name, limit in limits.items():
            if name not in allowed or not _is_integer(limit) or limit < 1:
                out.append(f"pgbouncer_{key} entry {_json(name)}: {_json(limit)} is not allowed: the key must be a {what}"
                           f" ({', '.join(map(str, allowed)) or 'none'}), the value a positive integer.")
    return out


RULES = (database_list, database_entries, listen, client_tls_beyond_loopback, client_tls_files, minimums, names,
         userlist_mode, auth_query_over_tcp, outside_the_inventory, user_verifiers, client_limits)


def pgbouncer_refusals(inputs, inventory_hostname, known_hosts):
    """The messages of every rule the inputs break, in the order of RULES; [] when none.

    ``inputs``: the role's variables without their ``pgbouncer_`` prefix (INPUTS names those read);
    ``inventory_hostname``: this host, the default server of a database entry; ``known_hosts``: the
    entries' hosts that are inventory hostnames (``... | select('in', hostvars)``).
    """
    if not isinstance(inputs, dict):
        raise AnsibleFilterError(f"pgbouncer_refusals: inputs must be a dict of the role's variables, got {inputs!r}")
    missing = [key for key in INPUTS if key not in inputs]
    if missing:
        raise AnsibleFilterError(f"pgbouncer_refusals: inputs lack {', '.join(missing)}")
    known = set(known_hosts or ())
    return [message for rule in RULES for message in rule(inputs, inventory_hostname, known)]


class FilterModule:
    """Checks of the pgbouncer role's inputs."""

    def filters(self):
        return {"pgbouncer_refusals": pgbouncer_refusals}
