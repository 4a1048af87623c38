"""pgbouncer_features: what each PgBouncer version takes of the version-dependent settings, and what it refuses."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_features import FilterModule, pgbouncer_features

# The role's defaults (roles/pgbouncer/defaults/main.yml).
DEFAULTS = {"max_prepared_statements": None, "transaction_timeout": 0, "query_wait_notify": None,
            "query_timeout": 0, "client_idle_timeout": 0, "extra_settings": {}, "user_settings": {},
            "auth_mode": "userlist", "processes": 0}
MANAGED = ["pool_mode", "max_client_conn", "unix_socket_dir"]


def features(version, **inputs):
    return pgbouncer_features(DEFAULTS | inputs, version, "pgb1", MANAGED)


def test_the_plugin_registers_the_filter():
    assert set(FilterModule().filters()) == {"pgbouncer_features"}


@pytest.mark.parametrize("version, settings, peers, rolling, console", [
    # Debian 12: no prepared statements, one process, SIGHUP.
    ("1.18.0", {"query_timeout": 0, "client_idle_timeout": 0}, False, False, False),
    ("1.19.1", {"query_timeout": 0, "client_idle_timeout": 0}, True, False, False),
    # 1.21 to 1.23 default to 0; the role turns prepared statements on as 1.24 does.
    ("1.21.0", {"query_timeout": 0, "client_idle_timeout": 0, "max_prepared_statements": 200}, True, False, False),
    ("1.23.1", {"query_timeout": 0, "client_idle_timeout": 0, "max_prepared_statements": 200}, True, True, False),
    # Debian 13.
    ("1.24.1", {"query_timeout": 0, "client_idle_timeout": 0, "max_prepared_statements": 200}, True, True, False),
    # forky.
    ("1.26.1", {"query_timeout": 0, "client_idle_timeout": 0, "max_prepared_statements": 200,
                "transaction_timeout": 0}, True, True, True),
])
def test_the_defaults_write_what_each_version_has(version, settings, peers, rolling, console):
    result = features(version)
    assert result["settings"] == settings
    assert result["refusals"] == []
    assert (result["peers"], result["rolling_restart"], result["console_reload"]) == (peers, rolling, console)


def test_every_setting_is_written_where_the_version_has_it():
    result = features("1.26.1", max_prepared_statements=50, transaction_timeout=30, query_wait_notify=2,
                      query_timeout=600, client_idle_timeout=3600)
    assert result["refusals"] == []
    assert result["settings"] == {"query_timeout": 600, "client_idle_timeout": 3600, "max_prepared_statements": 50,
                                  "transaction_timeout": 30, "query_wait_notify": 2}


@pytest.mark.parametrize("version, key, value, needs", [
    ("1.18.0", "max_prepared_statements", 200, "1.21"),
    ("1.18.0", "transaction_timeout", 30, "1.25"),
    ("1.24.1", "transaction_timeout", 30, "1.25"),
    ("1.24.1", "query_wait_notify", 2, "1.25"),
])
def test_a_setting_the_version_lacks_is_refused_with_the_variable_the_value_and_the_version(version, key, value, needs):
    result = features(version, **{key: value})
    assert len(result["refusals"]) == 1
    message = result["refusals"][0]
    assert message.startswith(f"pgbouncer_{key} {value}: PgBouncer {version} on pgb1 has no {key} (it needs {needs} or later)")
    assert key not in result["settings"]


def test_the_prepared_statements_refusal_says_what_it_means_for_drivers():
    assert "turn off the drivers' protocol-level prepared statements" in features("1.18.0", max_prepared_statements=1)["refusals"][0]


@pytest.mark.parametrize("key", ["max_prepared_statements", "transaction_timeout", "query_wait_notify"])
def test_zero_where_the_version_lacks_the_setting_is_what_it_does_anyway(key):
    result = features("1.18.0", **{key: 0})
    assert result["refusals"] == [] and key not in result["settings"]


def test_without_a_version_nothing_is_refused_and_only_what_every_version_has_is_written():
    result = features(None, max_prepared_statements=100, transaction_timeout=30)
    assert result["refusals"] == []
    assert result["settings"] == {"query_timeout": 0, "client_idle_timeout": 0}
    assert not (result["peers"] or result["rolling_restart"] or result["console_reload"])


def test_numbers_given_as_text_count_and_negative_ones_are_refused():
    assert features("1.26.1", transaction_timeout="45")["settings"]["transaction_timeout"] == 45
    assert features("1.26.1", query_timeout=-1)["refusals"] == [
        "pgbouncer_query_timeout must be a whole number of 0 or more (got -1)."]
    assert features("1.26.1", max_prepared_statements=True)["refusals"]


def test_extra_settings_pass_through_after_the_roles_own():
    result = features("1.26.1", extra_settings={"stats_period": 30, "server_check_delay": "10", "tcp_keepalive": True})
    assert result["refusals"] == []
    assert list(result["settings"])[-3:] == ["server_check_delay", "stats_period", "tcp_keepalive"]
    assert result["settings"]["tcp_keepalive"] == 1


@pytest.mark.parametrize("extra, fragment", [
    ({"pool_mode": "session"}, "pgbouncer_extra_settings pool_mode: the role writes pool_mode itself"),
    ({"unix_socket_dir": "/tmp"}, "the role writes unix_socket_dir itself"),
    ({"max_prepared_statements": 10}, "the role writes max_prepared_statements itself"),
    ({"Bad Name": 1}, 'key "Bad Name" is not a PgBouncer setting name'),
    ({"server_check_query": "select 1\n[databases]"}, "is not allowed: a number, true/false or one line"),
    ({"server_check_query": "select 1 ; x"}, "is not allowed"),
    ({"stats_period": [30]}, "is not allowed"),
])
def test_extra_settings_that_could_not_be_written_safely_are_refused(extra, fragment):
    result = features("1.26.1", extra_settings=extra)
    assert len(result["refusals"]) == 1 and fragment in result["refusals"][0], result["refusals"]
    assert not set(extra) - {"pool_mode", "unix_socket_dir", "max_prepared_statements"} & set(result["settings"])


def test_extra_settings_must_be_a_dict():
    assert features("1.26.1", extra_settings=["stats_period=30"])["refusals"] == [
        'pgbouncer_extra_settings must be a dict of [pgbouncer] setting to value (got ["stats_period=30"]).']


def test_inputs_must_be_complete_and_versions_must_look_like_versions():
    with pytest.raises(AnsibleFilterError, match="inputs must hold"):
        pgbouncer_features({"query_timeout": 0}, "1.26.1", "pgb1", MANAGED)
    with pytest.raises(AnsibleFilterError, match="version must look like 1.24.1"):
        features("latest")


def test_transaction_timeout_with_auth_query_is_refused_because_pgbouncer_times_out_the_lookups():
    result = features("1.26.1", transaction_timeout=600, auth_mode="auth_query")
    assert len(result["refusals"]) == 1
    assert result["refusals"][0].startswith("pgbouncer_transaction_timeout 600 with pgbouncer_auth_mode auth_query:")
    assert "Use pgbouncer_auth_mode userlist" in result["refusals"][0]
    assert features("1.26.1", transaction_timeout=0, auth_mode="auth_query")["refusals"] == []
    assert features("1.26.1", transaction_timeout=600, auth_mode="userlist")["refusals"] == []


def test_several_processes_are_refused_without_peers():
    assert features("1.18.0", processes=2)["refusals"] == [
        "pgbouncer_processes 2: PgBouncer 1.18.0 has no [peers] (1.19+), so with several processes on one port a cancel"
        " request can reach a process that does not run the query; set 0 or 1."]
    assert features("1.18.0", processes=1)["refusals"] == [] and features("1.24.1", processes=2)["refusals"] == []
    assert features(None, processes=2)["refusals"] == []


@pytest.mark.parametrize("version, setting, value", [
    ("1.18.0", "pool_mode", "session"),
    ("1.23.1", "pool_size", 2),
    ("1.24.1", "reserve_pool_size", 0),
    ("1.24.1", "query_timeout", 300),
    ("1.24.1", "idle_transaction_timeout", 30),
    ("1.24.1", "client_idle_timeout", 3600),
    ("1.25.0", "transaction_timeout", 60),
    ("1.26.1", "query_wait_timeout", 30),
])
def test_a_user_setting_is_written_from_the_version_that_has_it_and_refused_before(version, setting, value):
    result = features(version, user_settings={"batch": {setting: value}})
    assert (result["user_settings"], result["refusals"]) == ({"batch": {setting: value}}, [])
    if setting != "pool_mode":
        major, minor = map(int, version.split(".")[:2])
        older = features(f"{major}.{minor - 1}.0", user_settings={"batch": {setting: value}})
        assert older["user_settings"] == {}
        assert older["refusals"] == [
            f'pgbouncer_user_settings "batch" {setting}: PgBouncer {major}.{minor - 1}.0 on pgb1 has no per-user {setting}'
            f" (it needs {major}.{minor} or later), and the file would not load with it."]


@pytest.mark.parametrize("sentence, user_settings, message", [
    ("the shares are the role's", {"batch": {"max_user_connections": 3}},
     'pgbouncer_user_settings "batch" max_user_connections: the role sets max_user_connections from the application\'s share'),
    ("an unknown key would fail the whole file", {"batch": {"pool_sise": 2}},
     'pgbouncer_user_settings "batch" "pool_sise": not a [users] setting; allowed: pool_mode, pool_size,'),
    ("a pool mode PgBouncer lacks", {"batch": {"pool_mode": "bogus"}},
     'pgbouncer_user_settings "batch" pool_mode "bogus": allowed: transaction, session, statement.'),
    ("a negative timeout", {"batch": {"query_timeout": -1}},
     'pgbouncer_user_settings "batch" query_timeout must be a whole number of 0 or more (got -1).'),
    ("a name PgBouncer would cut", {"bat ch": {"pool_size": 1}},
     'pgbouncer_user_settings "bat ch": not a role name PgBouncer can read as a [users] key'),
    ("not a dict of dicts", {"batch": 2}, "pgbouncer_user_settings must be a dict of user to a dict of its settings"),
])
def test_bad_user_settings_are_refused(sentence, user_settings, message):
    result = features("1.26.1", user_settings=user_settings)
    assert len(result["refusals"]) == 1 and result["refusals"][0].startswith(message), (sentence, result["refusals"])
    assert result["user_settings"] == {}


def test_before_1_23_a_users_line_would_stop_auth_query_for_the_user():
    result = features("1.18.0", user_settings={"batch": {"pool_mode": "session"}}, auth_mode="auth_query")
    assert result["refusals"] == [
        'pgbouncer_user_settings "batch": PgBouncer 1.18.0 on pgb1 stops auth_query logins of a user with a [users]'
        " line (before 1.23); use pgbouncer_auth_mode userlist, or leave the user out."]
    assert features("1.23.0", user_settings={"batch": {"pool_mode": "session"}}, auth_mode="auth_query")["refusals"] == []
