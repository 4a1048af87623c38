"""pgbouncer_shares: each application's share as the settings the installed PgBouncer takes, and one warning."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_shares import FilterModule, pgbouncer_shares
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_sizing import pgbouncer_tune

# The molecule scenario's entry: pools of 12 + 2 for bench, leaky and the auth user.
DATABASES = [{"name": "bench", "users": ["bench", "leaky"]}]
SIZING = pgbouncer_tune({"cpus": 2, "server_cpus": 2, "reserve_pool_size": 2, "auth_query": True,
                         "auth_user": "pgbouncer_auth", "databases": DATABASES})
USERS = {"leaky": 5}
ENTRIES = {"bench": 1100}


def shares(version, users=None, entries=None, auth_user="pgbouncer_auth", sizing=None, user_settings=None):
    """pgbouncer_shares of the scenario's entry; users and entries default to its limits."""
    return pgbouncer_shares(SIZING if sizing is None else sizing, DATABASES, version,
                            USERS if users is None else users, ENTRIES if entries is None else entries, auth_user, "pgb1",
                            user_settings)


def test_the_plugin_registers_the_filter():
    assert set(FilterModule().filters()) == {"pgbouncer_shares"}


@pytest.mark.parametrize("version", ["1.24.1", "1.26.1", "1.25.0"])
def test_from_1_24_every_user_has_its_server_share_and_the_client_shares_are_written(version):
    assert shares(version) == {
        "users": {"bench": {"max_user_connections": 14},
                  "leaky": {"max_user_connections": 14, "max_user_client_connections": 5},
                  "pgbouncer_auth": {"max_user_connections": 14}},
        "databases": {"bench": {"max_db_client_connections": 1100}},
        "client_limits": True,
        "unlisted_users": [],
        "warning": "",
        "refusals": [],
    }


def test_1_18_gets_no_client_share_and_one_warning_naming_the_host_the_version_and_both_variables():
    result = shares("1.18.0")
    assert (result["client_limits"], result["databases"]) == (False, {"bench": {}})
    assert result["warning"] == (
        "pgb1: PgBouncer 1.18.0 has no max_user_client_connections (1.24+): the client share of users leaky"
        " (pgbouncer_user_client_limits) is not enforced here; no max_db_client_connections (1.24+): the client share"
        " of databases bench (pgbouncer_database_client_limits) is not enforced here; the server side still is."
    )


def test_1_18_warns_about_the_variable_that_is_set_only():
    assert "pgbouncer_database_client_limits" not in shares("1.18.0", entries={})["warning"]
    assert shares("1.18.0", users={}, entries={})["warning"] == ""


@pytest.mark.parametrize(
    ("sentence", "version", "auth_user", "listed", "unlisted"),
    [
        ("1.18 with auth_query: a [users] line would stop auth_query for the user, so only the auth user has one",
         "1.18.0", "pgbouncer_auth", ["pgbouncer_auth"], ["bench", "leaky"]),
        ("1.22 is the last version that does so", "1.22.1", "pgbouncer_auth", ["pgbouncer_auth"], ["bench", "leaky"]),
        ("1.23 looks such users up with auth_query", "1.23.0", "pgbouncer_auth",
         ["bench", "leaky", "pgbouncer_auth"], []),
        ("1.18 in userlist mode: the users are in the auth file, so their lines are safe", "1.18.0", "",
         ["bench", "leaky"], []),
    ],
)
def test_which_users_get_a_line(sentence, version, auth_user, listed, unlisted):
    result = shares(version, auth_user=auth_user)
    assert (list(result["users"]), result["unlisted_users"]) == (listed, unlisted), sentence


def test_a_version_not_installed_yet_counts_as_the_oldest():
    assert shares(None)["client_limits"] is False
    assert "PgBouncer (not installed) has no max_user_client_connections" in shares(None)["warning"]


@pytest.mark.parametrize(
    ("sentence", "changes", "message"),
    [
        ("a sizing that is not pgbouncer_tune's", {"sizing": {}}, "sizing must be the result of pgbouncer_tune"),
        ("a version that is not one", {"version": "latest"}, "version must look like 1.24.1, got 'latest'"),
        ("a limit that is not a positive integer", {"users": {"leaky": 0}},
         "pgbouncer_user_client_limits must map names to positive integers"),
        ("limits that are not a dict", {"entries": ["bench"]},
         "pgbouncer_database_client_limits must map names to positive integers"),
    ],
)
def test_bad_input_is_refused(sentence, changes, message):
    arguments = {"version": "1.24.1", **changes}
    with pytest.raises(AnsibleFilterError, match=message):
        shares(**arguments)


def test_a_users_own_settings_join_its_line_after_its_share():
    result = shares("1.26.1", user_settings={"leaky": {"pool_size": 4, "query_timeout": 300}, "batch": {"pool_mode": "session"}})
    assert result["users"]["leaky"] == {"max_user_connections": 14, "max_user_client_connections": 5, "pool_size": 4,
                                        "query_timeout": 300}
    assert result["users"]["batch"] == {"pool_mode": "session"}
    assert list(result["users"]) == sorted(result["users"]) and result["refusals"] == []


@pytest.mark.parametrize("setting, value, smallest", [("pool_size", 13, 12), ("reserve_pool_size", 3, 2)])
def test_a_per_user_pool_above_the_entries_is_refused_because_the_budget_counts_the_entries(setting, value, smallest):
    result = shares("1.26.1", user_settings={"leaky": {setting: value}})
    assert result["refusals"] == [
        f'pgbouncer_user_settings "leaky" {setting} {value}: above {smallest}, the smallest {setting} of the database'
        f" entries on pgb1. The budget counts every pool at its entry's size, so a larger per-user {setting} would"
        " open more server connections than planned; raise the entries' pools (pgbouncer_databases, the allowance)"
        " or set at most that."]
    assert shares("1.26.1", user_settings={"leaky": {setting: smallest}})["refusals"] == []
