# -*- coding: utf-8 -*-
# Copyright (c) headroom contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reading a running PgBouncer on its host: units, admin console, file descriptors, log.

Shared by the modules of headroom.pg. The parsing functions are pure (text in, values
out) so that they test without a PgBouncer; the rest reads /proc and runs programs
through an AnsibleModule.

The admin console is reached the way PgBouncer lets a local administrator in without
any password: as the special user "pgbouncer", over the Unix socket the process listens
on, from a process with PgBouncer's own UID (admin_pre_login in PgBouncer's
src/admin.c). So the socket is found in /proc (which also works while a changed
unix_socket_dir or listen_port waits for a restart) and psql runs as the UID and GID that
own the process (runuser). psql is there already: the pgbouncer role installs
postgresql-client, and PgBouncer's console speaks only the simple query protocol, which
psql handles; no Python driver is needed on the host.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import csv
import io
import os
import re

#: Units a host's PgBouncer processes run under (Debian's single unit, the role's numbered ones).
UNIT_PATTERNS = ("pgbouncer.service", "pgbouncer@*.service")
NUMBERED_UNIT = re.compile(r"^pgbouncer@([0-9]+)\.service$")
#: Console commands the modules may run: SHOW only, so a read never changes PgBouncer.
SHOW_COMMANDS = {"config": "SHOW CONFIG", "databases": "SHOW DATABASES", "pools": "SHOW POOLS", "users": "SHOW USERS"}
#: Printed by psql between the results of several commands in one session.
SEPARATOR = "@@headroom-pgbouncer-info@@"
#: Flags of a listening socket in /proc/net/unix (__SO_ACCEPTCON).
LISTENING = "00010000"
#: PgBouncer logs this at every start (check_limits in src/main.c).
FD_REPORT_MARKER = b"kernel file descriptor limit"
FD_REPORT = re.compile(
    r"kernel file descriptor limit: (?P<limit>[0-9]+) \(hard: (?P<hard>[0-9]+)\); "
    r"max_client_conn: (?P<max_client_conn>[0-9]+), max expected fd use: (?P<expected>[0-9]+)"
)
#: Properties of `systemctl show`, in the order of the unit fields returned.
UNIT_PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "UnitFileState", "MainPID")


def parse_systemctl_show(text):
    """Units from `systemctl show --property=...` of several units: blocks of KEY=VALUE, a blank line apart."""
    units = {}
    for block in text.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if not fields.get("Id"):
            continue
        pid = int(fields.get("MainPID") or 0)
        units[fields["Id"]] = {
            "load": fields.get("LoadState", ""),
            "active": fields.get("ActiveState", ""),
            "sub": fields.get("SubState", ""),
            "enabled": fields.get("UnitFileState", ""),
            "main_pid": pid,
            "running": pid > 0 and fields.get("ActiveState") in ("active", "reloading"),
        }
    return units


def parse_list_units(text):
    """Unit names from `systemctl list-units --plain --no-legend` (first column)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def listening_socket(socket_inodes, proc_net_unix):
    """The .s.PGSQL.<port> path a process listens on, from its socket inodes and /proc/net/unix; None if none."""
    for line in proc_net_unix.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in socket_inodes and fields[3] == LISTENING and "/.s.PGSQL." in fields[7]:
            return fields[7]
    return None


def nofile_limit(proc_limits):
    """The soft limit of open files from /proc/<pid>/limits; None if the line is missing."""
    for line in proc_limits.splitlines():
        if line.startswith("Max open files"):
            value = line.split()[3]
            return None if value == "unlimited" else int(value)
    return None


def split_results(stdout, count):
    """Rows ({column: value}) of each of ``count`` CSV results psql printed, SEPARATOR lines between them."""
    chunks = stdout.split(SEPARATOR + "\n")
    if len(chunks) != count:
        raise ValueError("expected %d console results, psql printed %d" % (count, len(chunks)))
    return [list(csv.DictReader(io.StringIO(chunk))) for chunk in chunks]


def parse_fd_report(line):
    """PgBouncer's start-up line about file descriptors as numbers, the line itself kept; None if it is not one."""
    if line is None:
        return None
    match = FD_REPORT.search(line)
    if not match:
        return None
    report = dict((key, int(value)) for key, value in match.groupdict().items())
    report["line"] = line
    return report


def last_line_with(path, marker, block=1 << 20):
    """The last line of a file that contains ``marker`` (bytes), read from the end; None when no line has it."""
    with open(path, "rb") as log:
        log.seek(0, os.SEEK_END)
        end = log.tell()
        tail = b""
        while end > 0:
            start = max(0, end - block)
            log.seek(start)
            tail = log.read(end - start) + tail
            found = tail.rfind(marker)
            if found >= 0:
                line_start = tail.rfind(b"\n", 0, found) + 1
                if line_start > 0 or start == 0:
                    line_end = tail.find(b"\n", found)
                    line = tail[line_start:] if line_end < 0 else tail[line_start:line_end]
                    return line.decode("utf-8", "replace")
            elif len(tail) > block:
                # Keep a partial first line only: the marker may start in the block read next.
                tail = tail[: tail.find(b"\n") + 1 or len(tail)]
            end = start
    return None


def as_owner(uid, gid, argv):
    """``argv`` run with the process owner's UID and GID and no supplementary groups (setpriv, util-linux)."""
    return ["setpriv", "--reuid=%d" % uid, "--regid=%d" % gid, "--clear-groups"] + argv


def vanished_descriptor(line, pid):
    """Whether a line of find's errors is a descriptor of ``pid`` that was closed while find listed it."""
    return line.startswith("find: ") and ("/proc/%d/fd/" % pid) in line and line.rstrip().endswith("No such file or directory")


def socket_inodes(find_output):
    """Inodes of the sockets among a process's descriptors, from `find /proc/PID/fd -printf '%l\\n'`."""
    return set(line[len("socket:["):-1] for line in find_output.splitlines() if line.startswith("socket:[") and line.endswith("]"))


def read_file(path):
    with open(path) as handle:
        return handle.read()


class Console:
    """The admin console of one running PgBouncer process, through psql run as the process's owner."""

    def __init__(self, module, pid):
        self.module = module
        self.pid = pid
        owner = os.stat("/proc/%d" % pid)
        self.uid, self.gid = owner.st_uid, owner.st_gid
        self.socket = self._listening_socket()

    def _listening_socket(self):
        """The process's listening Unix socket. Its descriptors are read as its owner: root may not
        read /proc/PID/fd of another user's process without CAP_SYS_PTRACE (containers drop it)."""
        argv = as_owner(self.uid, self.gid, ["find", "/proc/%d/fd" % self.pid, "-mindepth", "1", "-maxdepth", "1",
                                             "-printf", "%l\\n"])
        rc, stdout, stderr = self.module.run_command(argv)
        # A busy PgBouncer closes client descriptors while find lists them: those vanish with ENOENT,
        # and find exits 1. The listening socket stays; only other errors fail the read.
        errors = [line for line in stderr.splitlines() if line.strip() and not vanished_descriptor(line, self.pid)]
        if rc != 0 and (errors or not stderr.strip()):
            self.module.fail_json(msg="cannot list the descriptors of PgBouncer process %d: %s" % (self.pid, stderr.strip()))
        return listening_socket(socket_inodes(stdout), read_file("/proc/net/unix"))

    def program_replaced(self):
        """Whether the program the process runs is gone from disk (a package upgrade renamed the new one
        over it: the link ends in " (deleted)"). Read as the owner, for the reason above."""
        rc, stdout, _stderr = self.module.run_command(as_owner(self.uid, self.gid, ["readlink", "/proc/%d/exe" % self.pid]))
        return rc == 0 and stdout.rstrip("\n").endswith(" (deleted)")

    def show(self, names):
        """{name: rows} of SHOW commands (SHOW_COMMANDS keys), all in one psql session."""
        if not names:
            return {}
        if self.socket is None:
            self.module.fail_json(msg="PgBouncer process %d listens on no Unix socket; its admin console needs one" % self.pid)
        directory, name = os.path.split(self.socket)
        argv = as_owner(self.uid, self.gid, [
            "psql", "--csv", "--no-psqlrc", "--host", directory, "--port", name.rsplit(".", 1)[1],
            "--username", "pgbouncer", "--dbname", "pgbouncer"])
        for index, key in enumerate(names):
            if index:
                argv += ["--command", "\\echo " + SEPARATOR]
            argv += ["--command", SHOW_COMMANDS[key]]
        rc, stdout, stderr = self.module.run_command(argv, environ_update={"PGCONNECT_TIMEOUT": "10"})
        if rc != 0:
            self.module.fail_json(msg="PgBouncer console of process %d (%s): %s" % (self.pid, self.socket, stderr.strip()),
                                  rc=rc, stderr=stderr)
        return dict(zip(names, split_results(stdout, len(names))))
