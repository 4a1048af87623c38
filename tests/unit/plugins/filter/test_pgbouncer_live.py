"""pgbouncer_live_diff and pgbouncer_retired: the running PgBouncer against the planned one."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_live import (
    FilterModule,
    pgbouncer_apply,
    pgbouncer_live_diff,
    pgbouncer_reload_errors,
    pgbouncer_retired,
)

RESTART_ONLY = ["listen_addr", "listen_port", "unix_socket_dir", "so_reuseport", "user", "pidfile"]
SINGLE = {"id": 0, "unit": "pgbouncer.service", "unix_socket_dir": "/var/run/postgresql",
          "pidfile": "/var/run/postgresql/pgbouncer.pid", "logfile": "/var/log/postgresql/pgbouncer.log"}
SETTINGS = {"listen_port": 6432, "max_client_conn": 1200, "server_idle_timeout": "600", "auth_user": ""}
TARGETS = [{"name": "bench", "pool_size": 12}]


def running(config=None, pool_size="12", nofile=1420):
    live = {"listen_port": "6432", "max_client_conn": "1200", "server_idle_timeout": "600", "auth_user": "",
            "unix_socket_dir": SINGLE["unix_socket_dir"], "pidfile": SINGLE["pidfile"], "logfile": SINGLE["logfile"]}
    live.update(config or {})
    return {"pgbouncer.service": {"running": True, "config": live, "nofile": nofile,
                                  "databases": [{"name": "bench", "pool_size": pool_size}, {"name": "pgbouncer", "pool_size": "2"}]}}


def diff(units, instances=(SINGLE,)):
    return pgbouncer_live_diff(units, list(instances), SETTINGS, TARGETS, 1420, RESTART_ONLY)


def test_the_plugin_registers_its_filters():
    assert set(FilterModule().filters()) == {"pgbouncer_live_diff", "pgbouncer_retired", "pgbouncer_apply",
                                             "pgbouncer_reload_errors"}


@pytest.mark.parametrize(
    ("sentence", "units", "expected"),
    [
        ("a process that runs the plan differs in nothing", running(), []),
        ("a timeout printed as 600.0 is the 600 that was written", running({"server_idle_timeout": "600.0"}), []),
        (
            "a file broken by hand falls back to defaults: reloadable, so no restart",
            running({"max_client_conn": "100"}),
            [{"unit": "pgbouncer.service", "setting": "max_client_conn", "live": "100", "wanted": "1200", "restart": False}],
        ),
        (
            "a changed port waits for a restart",
            running({"listen_port": "6433"}),
            [{"unit": "pgbouncer.service", "setting": "listen_port", "live": "6433", "wanted": "6432", "restart": True}],
        ),
        (
            "an open-files limit set outside the role needs a restart, and compares as numbers",
            running(nofile=512),
            [{"unit": "pgbouncer.service", "setting": "LimitNOFILE", "live": 512, "wanted": 1420, "restart": True}],
        ),
        (
            "a pool size the reload did not take is named after its database",
            running(pool_size="20"),
            [{"unit": "pgbouncer.service", "setting": "bench.pool_size", "live": "20", "wanted": "12", "restart": False}],
        ),
    ],
)
def test_live_diff(sentence, units, expected):
    assert diff(units) == expected, sentence


def test_a_program_a_package_upgrade_replaced_waits_for_a_restart():
    units = running()
    units["pgbouncer.service"]["program_replaced"] = True
    assert diff(units) == [{"unit": "pgbouncer.service", "setting": "program", "live": "replaced on disk since start",
                            "wanted": "the installed one", "restart": True}]


def test_a_value_the_process_does_not_show_is_empty():
    units = running()
    del units["pgbouncer.service"]["config"]["auth_user"]
    units["pgbouncer.service"]["config"]["auth_user"] = None
    assert diff(units) == []


def test_a_process_that_does_not_run_differs_in_every_value_not_written_empty():
    differences = diff({"pgbouncer.service": {"running": False}})
    assert {d["setting"] for d in differences} == set(SETTINGS) - {"auth_user"} | {
        "unix_socket_dir", "pidfile", "logfile", "LimitNOFILE", "bench.pool_size"}
    assert {d["setting"] for d in differences if d["restart"]} == {"listen_port", "unix_socket_dir", "pidfile",
                                                                   "LimitNOFILE"}


def test_settings_come_before_pool_sizes_process_by_process():
    second = dict(SINGLE, unit="pgbouncer@2.service")
    units = running(pool_size="20")
    units["pgbouncer@2.service"] = dict(units["pgbouncer.service"], nofile=1)
    order = [(d["unit"], d["setting"]) for d in diff(units, [SINGLE, second])]
    assert order == [("pgbouncer@2.service", "LimitNOFILE"), ("pgbouncer.service", "bench.pool_size"),
                     ("pgbouncer@2.service", "bench.pool_size")]


def test_units_that_are_not_pgbouncer_info_units_are_refused():
    with pytest.raises(AnsibleFilterError, match="units dict of pgbouncer_info"):
        diff([])


def info(units=(), inis=()):
    return {
        "units": {name: {"load": load, "active": active, "enabled": "enabled" if active == "active" else "disabled"}
                  for name, load, active in units},
        "config_files": {f"/etc/pgbouncer/{ini}": "0" for ini in inis},
    }


NUMBERED = [{"id": 1}, {"id": 2}]


@pytest.mark.parametrize(
    ("sentence", "given", "instances", "expected"),
    [
        (
            "one process as before drops nothing",
            info([("pgbouncer.service", "loaded", "active")], ["pgbouncer.ini", "pgbouncer.ini.last-good"]),
            [{"id": 0}],
            {"active": ["pgbouncer.service"], "enabled": ["pgbouncer.service"], "loaded": ["pgbouncer.service"], "ids": [], "units": []},
        ),
        (
            "1 -> 2 stops Debian's single unit",
            info([("pgbouncer.service", "loaded", "active")]),
            NUMBERED,
            {"active": ["pgbouncer.service"], "enabled": ["pgbouncer.service"], "loaded": ["pgbouncer.service"], "ids": [], "units": ["pgbouncer.service"]},
        ),
        (
            "2 -> 1 stops both numbered units and removes their files",
            info([("pgbouncer.service", "loaded", "inactive"), ("pgbouncer@1.service", "loaded", "active"),
                  ("pgbouncer@2.service", "loaded", "active")], ["pgbouncer-1.ini", "pgbouncer-2.ini"]),
            [{"id": 0}],
            {"active": ["pgbouncer@1.service", "pgbouncer@2.service"], "enabled": ["pgbouncer@1.service", "pgbouncer@2.service"],
             "loaded": ["pgbouncer.service", "pgbouncer@1.service", "pgbouncer@2.service"],
             "ids": [1, 2], "units": ["pgbouncer@1.service", "pgbouncer@2.service"]},
        ),
        (
            "an ini file left on disk without its unit is dropped too; a planned unit systemd does not know is not loaded",
            info([("pgbouncer@1.service", "loaded", "active"), ("pgbouncer@2.service", "not-found", "inactive")],
                 ["pgbouncer-1.ini", "pgbouncer-3.ini", "pgbouncer-3.ini.last-good"]),
            NUMBERED,
            {"active": ["pgbouncer@1.service"], "enabled": ["pgbouncer@1.service"], "loaded": ["pgbouncer@1.service"], "ids": [3],
             "units": ["pgbouncer.service", "pgbouncer@3.service"]},
        ),
    ],
)
def test_retired(sentence, given, instances, expected):
    assert pgbouncer_retired(given, instances) == expected, sentence


RUNS = info([("pgbouncer.service", "loaded", "active")], ["pgbouncer.ini"])


def apply(to_write=(), given=None, instances=(SINGLE,), live_before=(), allow_restart=False, template_unit=False):
    given = dict(given or RUNS, template_unit=template_unit)
    return pgbouncer_apply([{"kind": kind, "path": f"/{kind}"} for kind in to_write], given, list(instances),
                           pgbouncer_retired(given, list(instances)), list(live_before), allow_restart)


RESTART = {"unit": "pgbouncer.service", "setting": "listen_port", "live": "6433", "wanted": "6432", "restart": True}
RELOAD = {"unit": "pgbouncer.service", "setting": "max_client_conn", "live": "100", "wanted": "1200", "restart": False}
TWO = [dict(SINGLE, id=1, unit="pgbouncer@1.service"), dict(SINGLE, id=2, unit="pgbouncer@2.service")]


@pytest.mark.parametrize(
    ("sentence", "kwargs", "expected"),
    [
        ("a process that runs and starts at boot, with nothing written, is a no-op", {}, []),
        ("a difference RELOAD would fix reloads, though no file changed (a run stopped before its RELOAD)",
         {"live_before": [RELOAD]}, ["a reload for max_client_conn (not live)"]),
        ("a difference RELOAD would fix in a process that does not run is its start's",
         {"live_before": [RELOAD], "given": info([("pgbouncer.service", "loaded", "inactive")])},
         ["pgbouncer.service to start or enable"]),
        ("a restart-only difference without pgbouncer_allow_restart is only reported", {"live_before": [RESTART]}, []),
        ("a restart-only difference with pgbouncer_allow_restart restarts",
         {"live_before": [RESTART, RELOAD], "allow_restart": True},
         ["a reload for max_client_conn (not live)", "a restart for listen_port (pgbouncer_allow_restart)"]),
        ("a userlist to write", {"to_write": ["userlist"]}, ["userlist.txt to write"]),
        ("the ini files of two processes to write, and a drop-in: one reason each, in a fixed order",
         {"to_write": ["unit", "ini", "ini"]},
         ["pgbouncer.ini to write", "the unit files (pgbouncer@.service, the LimitNOFILE drop-in) to write"]),
        ("directories, helpers and a last good copy to write make nothing live",
         {"to_write": ["directory", "helper", "last_good"]}, []),
        ("a process that is stopped",
         {"given": info([("pgbouncer.service", "loaded", "inactive")])}, ["pgbouncer.service to start or enable"]),
        ("a process that is not installed yet", {"given": info()}, ["pgbouncer.service to start or enable"]),
        ("the template unit left behind by several processes", {"template_unit": True},
         ["pgbouncer@.service to remove (one process)"]),
        ("1 -> 2 stops Debian's unit and starts the numbered ones", {"instances": TWO},
         ["pgbouncer.service to stop and disable", "pgbouncer@1.service, pgbouncer@2.service to start or enable"]),
        ("a numbered ini left on disk", {"given": info([("pgbouncer.service", "loaded", "active")], ["pgbouncer-3.ini"])},
         ["the files of process(es) 3 to remove"]),
    ],
)
def test_apply(sentence, kwargs, expected):
    assert apply(**kwargs) == expected, sentence


def test_apply_refuses_what_is_not_a_list_of_file_entries():
    for to_write in ({"userlist.txt": {"changed": True}}, [{"path": "/etc/pgbouncer/userlist.txt"}], ["userlist"]):
        with pytest.raises(AnsibleFilterError, match="to_write must be a list of file entries with a kind"):
            pgbouncer_apply(to_write, RUNS, [SINGLE], pgbouncer_retired(RUNS, [SINGLE]), [], False)


SHARES = {"users": {"leaky": {"max_user_connections": 14, "max_user_client_connections": 5},
                    "bench": {"max_user_connections": 14}},
          "databases": {"bench": {"max_db_client_connections": 1100}}}


def with_shares(users, databases_extra=None):
    units = running()
    units["pgbouncer.service"]["users"] = users
    units["pgbouncer.service"]["databases"][0].update(databases_extra or {})
    return units


@pytest.mark.parametrize(
    ("sentence", "users", "databases_extra", "expected"),
    [
        ("1.24 prints the limits the file holds: nothing differs",
         [{"name": "leaky", "max_user_connections": "14", "max_user_client_connections": "5"},
          {"name": "bench", "max_user_connections": "14", "max_user_client_connections": "0"}],
         {"max_client_connections": "1100"}, []),
        ("1.18 prints no limits: nothing to compare", [{"name": "leaky", "pool_mode": ""},
                                                       {"name": "bench", "pool_mode": ""}], {}, []),
        ("a client share the reload did not take is named after its user",
         [{"name": "leaky", "max_user_connections": "14", "max_user_client_connections": "0"},
          {"name": "bench", "max_user_connections": "14", "max_user_client_connections": "0"}],
         {"max_client_connections": "1100"},
         [{"unit": "pgbouncer.service", "setting": "leaky.max_user_client_connections", "live": "0", "wanted": "5",
           "restart": False}]),
        ("a client share that is live but no longer wanted (unset prints 0)",
         [{"name": "leaky", "max_user_connections": "14", "max_user_client_connections": "5"},
          {"name": "bench", "max_user_connections": "14", "max_user_client_connections": "9"}],
         {"max_client_connections": "0"},
         [{"unit": "pgbouncer.service", "setting": "bench.max_user_client_connections", "live": "9", "wanted": "0",
           "restart": False},
          {"unit": "pgbouncer.service", "setting": "bench.max_db_client_connections", "live": "0", "wanted": "1100",
           "restart": False}]),
        ("a planned user missing from SHOW USERS on a version that prints limits",
         [{"name": "bench", "max_user_connections": "14", "max_user_client_connections": "0"}],
         {"max_client_connections": "1100"},
         [{"unit": "pgbouncer.service", "setting": "leaky.max_user_connections", "live": "", "wanted": "14",
           "restart": False},
          {"unit": "pgbouncer.service", "setting": "leaky.max_user_client_connections", "live": "", "wanted": "5",
           "restart": False}]),
    ],
)
def test_the_shares_are_compared_where_show_prints_them(sentence, users, databases_extra, expected):
    units = with_shares(users, databases_extra)
    assert pgbouncer_live_diff(units, [SINGLE], SETTINGS, TARGETS, 1420, RESTART_ONLY, SHARES) == expected, sentence


def test_without_shares_the_users_are_not_read():
    assert pgbouncer_live_diff(with_shares([]), [SINGLE], SETTINGS, TARGETS, 1420, RESTART_ONLY) == []


def test_a_console_reload_that_answered_an_error_is_a_difference_that_names_the_log():
    reloads = {"results": [
        {"instance": {"unit": "pgbouncer@1.service", "logfile": "/var/log/postgresql/pgbouncer-1.log"}, "rc": 1,
         "stderr": "ERROR:  RELOAD failed, see logs for additional details\n"},
        {"instance": {"unit": "pgbouncer@2.service", "logfile": "/var/log/postgresql/pgbouncer-2.log"}, "rc": 0,
         "stderr": ""},
        {"instance": {"unit": "pgbouncer@3.service"}, "skipped": True},
    ]}
    assert pgbouncer_reload_errors(reloads) == [{
        "unit": "pgbouncer@1.service", "setting": "RELOAD",
        "live": "ERROR:  RELOAD failed, see logs for additional details",
        "wanted": "RELOAD without error (the cause is in /var/log/postgresql/pgbouncer-1.log)", "restart": False}]


def test_no_console_reload_means_no_reload_error():
    assert pgbouncer_reload_errors({}) == [] and pgbouncer_reload_errors({"results": []}) == []
    with pytest.raises(AnsibleFilterError):
        pgbouncer_reload_errors(["not", "registered"])


def test_a_users_own_pool_settings_are_compared_where_planned_as_pgbouncer_pads_them():
    """1.24.1 prints "%9d", and for a user without its own pool_size the previous row's (PgBouncer #1489)."""
    shares = {"users": {"leaky": {"max_user_connections": 14, "pool_size": 4, "pool_mode": "session"},
                        "bench": {"max_user_connections": 14}}, "databases": {}}
    live = [{"name": "leaky", "max_user_connections": "14", "max_user_client_connections": "0", "pool_size": "        4",
             "reserve_pool_size": "        1", "pool_mode": "session"},
            {"name": "bench", "max_user_connections": "14", "max_user_client_connections": "0", "pool_size": "        4",
             "reserve_pool_size": "        1", "pool_mode": ""}]
    assert pgbouncer_live_diff(with_shares(live), [SINGLE], SETTINGS, TARGETS, 1420, RESTART_ONLY, shares) == []
    live[0]["pool_size"] = "       12"
    assert pgbouncer_live_diff(with_shares(live), [SINGLE], SETTINGS, TARGETS, 1420, RESTART_ONLY, shares) == [
        {"unit": "pgbouncer.service", "setting": "leaky.pool_size", "live": "12", "wanted": "4", "restart": False},
    ]
