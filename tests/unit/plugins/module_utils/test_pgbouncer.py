"""module_utils/pgbouncer: what pgbouncer_info reads from systemd, /proc, psql and the log."""

import pytest
from ansible_collections.headroom.pg.plugins.module_utils.pgbouncer import (
    SEPARATOR,
    last_line_with,
    listening_socket,
    nofile_limit,
    parse_fd_report,
    parse_list_units,
    parse_systemctl_show,
    socket_inodes,
    split_results,
    vanished_descriptor,
)

FD_LINE = ("2026-12-01 10:00:00.000 UTC [812] LOG kernel file descriptor limit: 1420 (hard: 1420); "
           "max_client_conn: 1200, max expected fd use: 1262")


def test_systemctl_show_gives_each_unit_its_state():
    text = (
        "Id=pgbouncer.service\nLoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\nMainPID=812\n"
        "\n"
        "Id=pgbouncer@1.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\nMainPID=0\n"
    )
    assert parse_systemctl_show(text) == {
        "pgbouncer.service": {"load": "loaded", "active": "active", "sub": "running", "enabled": "enabled",
                              "main_pid": 812, "running": True},
        "pgbouncer@1.service": {"load": "not-found", "active": "inactive", "sub": "dead", "enabled": "",
                                "main_pid": 0, "running": False},
    }


def test_list_units_gives_the_first_column():
    text = "pgbouncer.service loaded inactive dead connection pooler\npgbouncer@1.service loaded active running x\n\n"
    assert parse_list_units(text) == ["pgbouncer.service", "pgbouncer@1.service"]


NET_UNIX = (
    "Num       RefCount Protocol Flags    Type St Inode Path\n"
    "0000000000000000: 00000002 00000000 00010000 0001 01 4711 /var/run/postgresql/.s.PGSQL.5432\n"
    "0000000000000000: 00000002 00000000 00000000 0001 03 4712 /var/run/postgresql/.s.PGSQL.6432\n"
    "0000000000000000: 00000002 00000000 00010000 0001 01 4713 /var/run/postgresql/.s.PGSQL.6432\n"
)


@pytest.mark.parametrize(
    ("sentence", "inodes", "expected"),
    [
        ("the listening socket of the process is found by its inode", {"4713", "9"}, "/var/run/postgresql/.s.PGSQL.6432"),
        ("a connected socket of the same path is not a listener", {"4712"}, None),
        ("another process's listener is not this one's", {"9"}, None),
    ],
)
def test_listening_socket(sentence, inodes, expected):
    assert listening_socket(inodes, NET_UNIX) == expected, sentence


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ("Limit                     Soft Limit           Hard Limit           Units\n"
         "Max open files            1420                 1420                 files\n", 1420),
        ("Max open files            unlimited            unlimited            files\n", None),
        ("Max processes 10 10 processes\n", None),
    ],
)
def test_nofile_limit_is_the_soft_limit(limits, expected):
    assert nofile_limit(limits) == expected


def test_several_console_results_split_at_the_separator():
    stdout = f'key,value\npool_mode,transaction\nauth_user,""\n{SEPARATOR}\nname,pool_size\nbench,12\n'
    assert split_results(stdout, 2) == [
        [{"key": "pool_mode", "value": "transaction"}, {"key": "auth_user", "value": ""}],
        [{"name": "bench", "pool_size": "12"}],
    ]


def test_a_missing_result_is_an_error():
    with pytest.raises(ValueError, match="expected 2 console results, psql printed 1"):
        split_results("key,value\n", 2)


def test_the_fd_report_is_read_as_numbers():
    assert parse_fd_report(FD_LINE) == {"limit": 1420, "hard": 1420, "max_client_conn": 1200, "expected": 1262,
                                        "line": FD_LINE}
    assert parse_fd_report("LOG something else") is None
    assert parse_fd_report(None) is None


@pytest.mark.parametrize("block", [8, 64, 1 << 20])
def test_the_last_fd_report_of_a_long_log_is_found_from_the_end(tmp_path, block):
    log = tmp_path / "pgbouncer.log"
    older = FD_LINE.replace("1420 (hard", "1024 (hard")
    log.write_text(older + "\n" + "LOG C-0x1: bench/bench login attempt\n" * 50 + FD_LINE + "\n" + "LOG stats\n" * 30)
    assert last_line_with(log, b"kernel file descriptor limit", block=block) == FD_LINE


def test_a_log_without_fd_report_gives_none(tmp_path):
    log = tmp_path / "pgbouncer.log"
    log.write_text("LOG stats\n" * 10)
    assert last_line_with(log, b"kernel file descriptor limit", block=16) is None


def test_socket_inodes_are_read_from_the_descriptor_links():
    assert socket_inodes("/dev/null\nsocket:[4713]\npipe:[12]\nsocket:[9]\n") == {"4713", "9"}


@pytest.mark.parametrize("line, vanished", [
    # Seen on 1.26 under pgbench --connect: a client's descriptor closed between find's readdir and readlink.
    ("find: \u2018/proc/3264/fd/25\u2019: No such file or directory", True),
    ("find: '/proc/3264/fd/25': No such file or directory", True),
    ("find: '/proc/3265/fd/25': No such file or directory", False),
    ("find: '/proc/3264/fd': Permission denied", False),
    ("find: '/proc/3264/fd': No such file or directory", False),
])
def test_only_a_client_descriptor_closed_during_the_listing_is_not_an_error(line, vanished):
    assert vanished_descriptor(line, 3264) is vanished
