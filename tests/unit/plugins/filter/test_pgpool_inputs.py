"""pgpool_refusals: what the pgpool role refuses before anything changes, each message naming the variable."""

import pytest
from ansible_collections.headroom.pg.plugins.filter.pgpool_inputs import FilterModule, pgpool_refusals

GOOD = {
    "backends": [{"host": "db1"}, {"host": "db2", "port": 5433, "weight": 0.5}],
    "users": [{"name": "app", "password": "s3cret:with-colon"}],
    "pool_key": "key",
    "health_check_user": "pgpool_check",
    "health_check_password": "pw",
    "health_check_database": "postgres",
    "listen_addresses": "127.0.0.1",
    "socket_dir": "/var/run/postgresql",
    "hba_sources": ["10.0.0.0/8"],
    "cancel_headroom": False,
    "load_balance_mode": True,
    "allow_restart": False,
    "port": 9999,
    "num_init_children": 0,
    "max_pool": 0,
    "client_demand": 1000,
    "listen_backlog_multiplier": 0,
    "reserved_connections": 0,
    "health_check_period": 10,
    "sr_check_period": 10,
    "client_idle_limit": "0",
    "nodes": "2",
}


def test_the_plugin_registers_pgpool_refusals():
    assert set(FilterModule().filters()) == {"pgpool_refusals"}


def test_good_inputs_pass():
    assert pgpool_refusals(GOOD) == []


@pytest.mark.parametrize(
    ("sentence", "change", "message"),
    [
        ("a port out of range", {"port": 70000}, "pgpool_port 70000 is not allowed: it must be an integer from 1 to 65535."),
        ("no backend", {"backends": []}, "pgpool_backends [] is not allowed: it must list at least one backend"),
        ("a backend host that would break the file", {"backends": [{"host": "db1'; x"}]}, "pgpool_backends[0].host"),
        ("the same backend twice", {"backends": [{"host": "db1"}, {"host": "db1", "port": 5432}]},
         "each backend may be listed once"),
        ("a missing pool key", {"pool_key": ""}, "pgpool_pool_key is not allowed empty"),
        ("a missing health check password", {"health_check_password": ""}, "pgpool_health_check_password"),
        ("a user name with a colon (pool_passwd's separator)", {"users": [{"name": "a:b", "password": "x"}]},
         'pgpool_users[0].name "a:b" is not allowed'),
        ("a password over two lines", {"users": [{"name": "app", "password": "a\nb"}]},
         "must be a non-empty string of one line"),
        ("the health check user listed as a user too", {"users": [{"name": "pgpool_check", "password": "x"}]},
         'pgpool_users ["pgpool_check"] is not allowed: each user may be listed once'),
        ("reserved_connections at num_init_children", {"num_init_children": 10, "reserved_connections": 10},
         "pgpool_reserved_connections 10 is not allowed: it must be below pgpool_num_init_children 10"),
        ("a network that is not CIDR", {"hba_sources": ["10.0.0.1"]}, 'pgpool_hba_sources entry "10.0.0.1"'),
        ("a relative socket dir", {"socket_dir": "run"}, 'pgpool_socket_dir "run" is not allowed'),
        ("a count that is not a number", {"num_init_children": "many"}, 'pgpool_num_init_children "many" is not allowed'),
    ],
)
def test_refusals(sentence, change, message):
    refusals = pgpool_refusals({**GOOD, **change})
    assert any(message in refusal for refusal in refusals), (sentence, refusals)


def test_no_secret_is_repeated_in_a_message():
    refusals = pgpool_refusals({**GOOD, "users": [{"name": "a b", "password": "topsecret"}], "port": 0})
    assert refusals and not any("topsecret" in refusal for refusal in refusals)
