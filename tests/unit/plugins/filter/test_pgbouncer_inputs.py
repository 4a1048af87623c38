"""pgbouncer_refusals: what the pgbouncer role refuses before anything changes, and that each message names the variable."""

from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_inputs import INPUTS, FilterModule, pgbouncer_refusals

ROLE = Path(__file__).resolve().parents[4] / "roles/pgbouncer"
HOST = "pgb1"
KNOWN = ("pgb1", "db1")
# The role's defaults, with the one database every check needs (max_client_conn's default is a template).
GOOD = {
    **{key.removeprefix("pgbouncer_"): value
       for key, value in yaml.safe_load((ROLE / "defaults/main.yml").read_text()).items()},
    "databases": [{"name": "appdb", "users": ["app"]}],
    "max_client_conn": 1000,
    "external_servers": {},  # the default is a template: headroom_external_servers | default({})
}
VERIFIER = "SCRAM-SHA-256$4096:AoALRuTPAEXqA6ugduIK9g==$e3C5LEdhIReYu6NwXIliadmJUuredfDSXHQnup/Wh14=:zOwVNeQcDmKA/OecoDa2ACG8KaYGF98CNS8IXVv+T0k="
RDS = {"orders-rds": {"address": "orders.abc.rds.amazonaws.com", "max_connections": 100}}
# An entry to a server outside the inventory, as it is allowed: named users with verifiers, TLS verify-full.
OUTSIDE = {"external_servers": RDS, "databases": [{"name": "orders", "host": "orders-rds", "users": ["orders_app"]}],
           "user_verifiers": {"orders_app": VERIFIER}, "server_tls_sslmode": "verify-full",
           "server_tls_ca_file": "/etc/ssl/certs/rds-ca.pem"}


def refusals(known=KNOWN, **changes):
    return pgbouncer_refusals({**GOOD, **changes}, HOST, known)


def test_the_plugin_registers_the_filter():
    assert set(FilterModule().filters()) == {"pgbouncer_refusals"}


def test_the_role_builds_every_input_the_filter_reads():
    built = yaml.safe_load((ROLE / "vars/main.yml").read_text())["__pgbouncer_inputs"]
    assert set(built) == set(INPUTS)
    assert all(value == f"{{{{ pgbouncer_{key} }}}}" for key, value in built.items())


def test_the_defaults_with_one_database_are_allowed():
    assert refusals() == []


ENTRY = {"name": "appdb", "users": ["app"]}

# (sentence, changes, the variable the message names): the PGBOUNCER cases of
# molecule/faults/tests/test_bad_input.py come first, with their ids.
CASES = [
    ("pgbouncer database name with a quote", {"databases": [{"name": "app'db", "users": ["app"]}]},
     "pgbouncer_databases"),
    ("pgbouncer database name with a newline", {"databases": [{"name": "appdb\n", "users": ["app"]}]},
     "pgbouncer_databases"),
    ("pgbouncer unknown database target: auth_query over TCP without a client certificate",
     {"databases": [{**ENTRY, "host": "db9.invalid"}]}, "pgbouncer_databases"),
    ("pgbouncer listen_addr not an address", {"listen_addr": "any interface"}, "pgbouncer_listen_addr"),
    ("pgbouncer listen_addr with a newline", {"listen_addr": "127.0.0.1\nadmin_users = x"}, "pgbouncer_listen_addr"),
    ("pgbouncer port out of range", {"listen_port": 70000}, "pgbouncer_listen_port"),
    ("pgbouncer negative max_client_conn", {"max_client_conn": -1}, "pgbouncer_max_client_conn"),
    ("pgbouncer admin user with a quote", {"admin_users": ["admin'--"]}, "pgbouncer_admin_users"),
    ("pgbouncer auth user with a newline", {"auth_user": "pgbouncer_auth\n"}, "pgbouncer_auth_user"),
    # (pgbouncer unknown pool mode is refused by argument_specs' choices before validate.yml.)
    ("no database at all", {"databases": []}, "pgbouncer_databases"),
    ("a name twice", {"databases": [ENTRY, {**ENTRY}]}, "pgbouncer_databases"),
    ("a name twice in another case (unique ignores case)", {"databases": [ENTRY, {**ENTRY, "name": "AppDB"}]},
     "pgbouncer_databases"),
    ("a key with a dot PgBouncer would not read unquoted", {"databases": [{**ENTRY, "name": "app.db"}]},
     "pgbouncer_databases"),
    ("the admin console's name", {"databases": [{**ENTRY, "name": "pgbouncer"}]}, "pgbouncer_databases"),
    ("a dbname with a space", {"databases": [{**ENTRY, "dbname": "app db"}]}, "pgbouncer_databases"),
    ("a host with a space", {"databases": [{**ENTRY, "host": "db 1"}]}, "pgbouncer_databases"),
    ("port 0", {"databases": [{**ENTRY, "port": 0}]}, "pgbouncer_databases"),
    ("port 65536", {"databases": [{**ENTRY, "port": "65536"}]}, "pgbouncer_databases"),
    ("a user with a quote", {"databases": [{**ENTRY, "users": ["app'"]}]}, "pgbouncer_databases"),
    ("users a string", {"databases": [{**ENTRY, "users": "3"}]}, "pgbouncer_databases"),
    ("pool_size 0", {"databases": [{**ENTRY, "pool_size": 0}]}, "pgbouncer_databases"),
    ("a negative reserve pool", {"databases": [{**ENTRY, "reserve_pool_size": -1}]}, "pgbouncer_databases"),
    ("a negative max_db_connections", {"databases": [{**ENTRY, "max_db_connections": -1}]}, "pgbouncer_databases"),
    ("port 0 on the listener", {"listen_port": "0"}, "pgbouncer_listen_port"),
    ("a relative socket directory", {"unix_socket_dir": "run/pgbouncer"}, "pgbouncer_unix_socket_dir"),
    ("every interface without client TLS", {"listen_addr": "*"}, "pgbouncer_client_tls_sslmode"),
    ("an address beyond loopback with prefer",
     {"listen_addr": "127.0.0.1, 10.0.0.5", "client_tls_sslmode": "prefer", "client_tls_cert_file": "/c.pem",
      "client_tls_key_file": "/k.pem"},
     "pgbouncer_client_tls_sslmode"),
    ("client TLS without a key", {"client_tls_sslmode": "require", "client_tls_cert_file": "/etc/ssl/c.pem"},
     "pgbouncer_client_tls_key_file"),
    ("a client CA path with a space", {"client_tls_ca_file": "/etc/ssl/my ca.pem"}, "pgbouncer_client_tls_*_file"),
    ("a stats user with a space", {"stats_users": ["mon itor"]}, "pgbouncer_stats_users"),
    ("an auth schema with a quote", {"auth_schema": "pg'bouncer"}, "pgbouncer_auth_schema"),
    ("an upper-case startup parameter", {"ignore_startup_parameters": ["Extra_Float_Digits"]},
     "pgbouncer_ignore_startup_parameters"),
    ("a server key path with a newline", {"server_tls_key_file": "/etc/ssl/k.pem\n"}, "pgbouncer_server_tls_*_file"),
    ("an hba source without a prefix", {"hba_source": "10.0.0.5"}, "pgbouncer_hba_source"),
    ("userlist with a count of users", {"auth_mode": "userlist", "databases": [{**ENTRY, "users": 2}]},
     "pgbouncer_databases"),
    ("userlist on a server the inventory does not know",
     {"auth_mode": "userlist", "databases": [{**ENTRY, "host": "10.0.0.9"}]}, "pgbouncer_auth_mode"),
    ("auth_query to an inventory server over TCP without a client certificate",
     {"databases": [{**ENTRY, "host": "db1"}]}, "pgbouncer_server_tls_cert_file"),
    ("a server outside the inventory without its users' verifiers", {**OUTSIDE, "user_verifiers": {}},
     "pgbouncer_user_verifiers"),
    ("a server outside the inventory with a count of users",
     {**OUTSIDE, "databases": [{"name": "orders", "host": "orders-rds", "users": 2}]}, "pgbouncer_user_verifiers"),
    ("a server outside the inventory without TLS verify-full", {**OUTSIDE, "server_tls_sslmode": "require"},
     "pgbouncer_server_tls_sslmode verify-full"),
    ("a server outside the inventory without a CA", {**OUTSIDE, "server_tls_ca_file": ""},
     "pgbouncer_server_tls_ca_file"),
    ("a password where a verifier goes", {**OUTSIDE, "user_verifiers": {"orders_app": "secret"}},
     "pgbouncer_user_verifiers"),
    ("an md5 hash where a verifier goes",
     {**OUTSIDE, "user_verifiers": {"orders_app": "md5" + "0" * 32}}, "pgbouncer_user_verifiers"),
    ("external servers not a dict", {"external_servers": ["orders-rds"]}, "pgbouncer_external_servers"),
] + [(f"{key} below {minimum}", {key: minimum - 1}, f"pgbouncer_{key}")
     for key, minimum in [("max_client_conn", 1), ("server_connection_allowance", 0), ("server_cpus", 0),
                          ("default_pool_size", 0), ("reserve_pool_size", 0), ("processes", 0), ("expected_tps", 0),
                          ("server_idle_timeout", 0), ("query_wait_timeout", 0), ("idle_transaction_timeout", 0),
                          ("server_lifetime", 0), ("nofile_limit", 0)]]


@pytest.mark.parametrize(("sentence", "changes", "variable"), CASES, ids=[case[0] for case in CASES])
def test_each_broken_rule_is_refused_with_a_message_naming_its_variable(sentence, changes, variable):
    # The role joins the messages into one fail_msg: the variable must be in it (a value may break two rules).
    assert variable in " ".join(refusals(**changes)), sentence


@pytest.mark.parametrize(
    ("sentence", "changes"),
    [
        ("a count of users", {"databases": [{**ENTRY, "users": 3}]}),
        ("a dbname with a dot and a dollar", {"databases": [{**ENTRY, "dbname": "app.db$1"}]}),
        ("a socket directory as host", {"databases": [{**ENTRY, "host": "/var/run/postgresql"}]}),
        ("an inventory host over TCP with a client certificate",
         {"databases": [{**ENTRY, "host": "db1"}], "server_tls_cert_file": "/etc/ssl/c.pem",
          "server_tls_key_file": "/etc/ssl/k.pem"}),
        ("an address in userlist mode is this host when it is the default", {"auth_mode": "userlist"}),
        ("a port given with -e as a string", {"listen_port": "6433", "databases": [{**ENTRY, "port": "5433"}]}),
        ("a timeout given as a float string", {"server_lifetime": "3600.0"}),
        ("the Unix socket only", {"listen_addr": ""}),
        ("loopback names and addresses", {"listen_addr": "127.0.0.1, ::1,localhost"}),
        ("every interface with client TLS",
         {"listen_addr": "*", "client_tls_sslmode": "verify-full", "client_tls_cert_file": "/etc/ssl/c.pem",
          "client_tls_key_file": "/etc/ssl/k.pem", "client_tls_ca_file": "/etc/ssl/ca.pem"}),
        ("an IPv6 hba source", {"hba_source": "fd00::5/128"}),
        ("a server outside the inventory with verifiers and verify-full, in auth_query mode", OUTSIDE),
        ("the same in userlist mode", {**OUTSIDE, "auth_mode": "userlist"}),
        ("a server outside the inventory given by its address",
         {**OUTSIDE, "databases": [{"name": "orders", "host": "orders.abc.rds.amazonaws.com", "users": ["orders_app"]}]}),
    ],
)
def test_allowed_inputs(sentence, changes):
    assert refusals(**changes) == [], sentence


def test_every_broken_rule_has_its_own_message():
    messages = refusals(listen_port=0, max_client_conn=0, query_wait_timeout=-1, admin_users=["a b"])
    assert [m.split()[0] for m in messages] == [
        "pgbouncer_listen_addr", "pgbouncer_max_client_conn", "pgbouncer_query_wait_timeout", "pgbouncer_admin_users"]


def test_a_value_that_does_not_convert_counts_as_0_like_jinjas_int():
    assert refusals(max_client_conn="lots") == ['pgbouncer_max_client_conn must be at least 1 (got "lots").']
    assert refusals(server_cpus="lots") == []


def test_the_entry_message_shows_the_entry_and_the_patterns():
    (message,) = refusals(databases=[{"name": "app'db", "users": ["app"]}])
    assert message.startswith('pgbouncer_databases entry {"name": "app\'db", "users": ["app"]} is not allowed')
    assert r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z" in message


def test_each_entry_is_refused_by_name():
    messages = refusals(auth_mode="userlist", databases=[{**ENTRY, "users": 1}, {**ENTRY, "name": "b", "users": 2}])
    assert ['"appdb"' in messages[0], '"b"' in messages[1]] == [True, True]


def test_an_unknown_host_is_told_by_known_hosts():
    assert refusals(known=("pgb1",), auth_mode="userlist", databases=[{**ENTRY, "host": "db1"}]) != []


def test_inputs_that_lack_a_key_are_refused_loudly():
    with pytest.raises(AnsibleFilterError, match="inputs lack databases"):
        pgbouncer_refusals({k: v for k, v in GOOD.items() if k != "databases"}, HOST, KNOWN)
    with pytest.raises(AnsibleFilterError, match="must be a dict"):
        pgbouncer_refusals([], HOST, KNOWN)


@pytest.mark.parametrize(
    ("sentence", "changes", "message"),
    [
        ("user client limits that are not a dict", {"user_client_limits": ["app"]},
         'pgbouncer_user_client_limits must be a dict of user named in a pgbouncer_databases entry\'s users to the most'
         ' client connections it may hold in one PgBouncer process, a positive integer (got ["app"]).'),
        ("database client limits that are not a dict", {"database_client_limits": "appdb=5"},
         "pgbouncer_database_client_limits must be a dict of pgbouncer_databases entry name to the most client"
         ' connections it may hold in one PgBouncer process, a positive integer (got "appdb=5").'),
        ("a user limit of 0", {"user_client_limits": {"app": 0}},
         'pgbouncer_user_client_limits entry "app": 0 is not allowed: the key must be a user named in a'
         " pgbouncer_databases entry's users (app), the value a positive integer."),
        ("a user limit given as a string", {"user_client_limits": {"app": "5"}},
         'pgbouncer_user_client_limits entry "app": "5" is not allowed'),
        ("a user limit given as true", {"user_client_limits": {"app": True}},
         'pgbouncer_user_client_limits entry "app": true is not allowed'),
        ("a user no entry names", {"user_client_limits": {"ghost": 5}},
         'pgbouncer_user_client_limits entry "ghost": 5 is not allowed: the key must be a user named in a'
         " pgbouncer_databases entry's users (app), the value a positive integer."),
        ("a user when the entries give a count of users",
         {"databases": [{**ENTRY, "users": 3}], "user_client_limits": {"app": 5}},
         'pgbouncer_user_client_limits entry "app": 5 is not allowed: the key must be a user named in a'
         " pgbouncer_databases entry's users (none), the value a positive integer."),
        ("a database that is not an entry", {"database_client_limits": {"otherdb": 100}},
         'pgbouncer_database_client_limits entry "otherdb": 100 is not allowed: the key must be a pgbouncer_databases'
         " entry name (appdb), the value a positive integer."),
        ("a negative database limit", {"database_client_limits": {"appdb": -1}},
         'pgbouncer_database_client_limits entry "appdb": -1 is not allowed'),
    ],
)
def test_client_limits_are_refused_with_the_variable_the_value_and_what_is_allowed(sentence, changes, message):
    assert any(m.startswith(message) for m in refusals(**changes)), (sentence, refusals(**changes))


def test_client_limits_for_named_users_and_entries_are_allowed():
    changes = {"databases": [ENTRY, {"name": "reports", "users": ["app", "report"]}],
               "user_client_limits": {"app": 200, "report": 20}, "database_client_limits": {"reports": 50}}
    assert refusals(**changes) == []


def test_a_refused_verifier_is_never_shown():
    secret = "my-password-by-mistake"
    messages = refusals(**{**OUTSIDE, "user_verifiers": {"orders_app": secret}})
    assert messages and secret not in " ".join(messages)
