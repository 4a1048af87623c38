"""Bad input: every run fails before anything on the host changes, and says which variable is wrong.

One generated playbook per host runs its cases, one play each: the role with
the bad input, then the host's fingerprint (managed files with modes and owners, packages,
clusters, postmaster start and last reload), compared with the one before the case. The pgbouncer role
runs in check mode: a case it does not catch must not change PgBouncer either.

The cases whose answer depends on the host (its PostgreSQL version, clusters, libraries, memory
and cgroups) run on every platform; the others are checked on the controller alone, the same
on every platform, so each runs on one of them, in turn (PLATFORMS).
"""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import FINGERPRINT, ansible_playbook

TUNING, POSTGRESQL, PGBOUNCER = "headroom.pg.postgresql_tuning", "headroom.pg.postgresql", "headroom.pg.pgbouncer"
GOOD_POOL = {"name": "appdb", "users": ["app"]}
# An entry for a server outside the inventory, complete but for what a case takes away.
OUTSIDE = {
    "headroom_external_servers": {"orders-rds": {"address": "orders.rds.invalid", "max_connections": 100}},
    "pgbouncer_databases": [{"name": "orders", "host": "orders-rds", "users": ["orders_app"]}],
    "pgbouncer_user_verifiers": {"orders_app": "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"},
    "pgbouncer_server_tls_sslmode": "verify-full",
    "pgbouncer_server_tls_ca_file": "/etc/ssl/certs/ca-certificates.crt",
}

# id: (role, variables, the variable the message must name)
CASES = {
    "unknown profile": (TUNING, {"postgresql_tuning_profile": "webscale"}, "postgresql_tuning_profile"),
    "unknown storage": (TUNING, {"postgresql_tuning_storage": "floppy"}, "postgresql_tuning_storage"),
    "max_connections a word": (TUNING, {"postgresql_tuning_max_connections": "lots"}, "postgresql_tuning_max_connections"),
    "max_connections negative": (TUNING, {"postgresql_tuning_max_connections": -5}, "postgresql_tuning_max_connections"),
    "max_connections above the memory ceiling": (
        TUNING, {"postgresql_tuning_max_connections": 100000}, "postgresql_tuning_max_connections"),
    "connection demand negative": (
        TUNING, {"postgresql_tuning_connection_demand": -1}, "postgresql_tuning_connection_demand"),
    "pools above the ceiling": (
        TUNING, {"postgresql_tuning_connection_demand": 50000}, "postgresql_tuning_connection_demand"),
    "memory fraction 0": (TUNING, {"postgresql_tuning_memory_fraction": 0}, "postgresql_tuning_memory_fraction"),
    "memory fraction above 1": (TUNING, {"postgresql_tuning_memory_fraction": 1.5}, "postgresql_tuning_memory_fraction"),
    "memory fraction a word": (TUNING, {"postgresql_tuning_memory_fraction": "half"}, "postgresql_tuning_memory_fraction"),
    "reserved memory 16 GiB": (TUNING, {"postgresql_tuning_reserved_memory": "16 GiB"}, "postgresql_tuning_reserved_memory"),
    "reserved memory negative": (TUNING, {"postgresql_tuning_reserved_memory": "-512MB"}, "postgresql_tuning_reserved_memory"),
    "reserved memory above the host's": (
        TUNING, {"postgresql_tuning_reserved_memory": "64TB"}, "postgresql_tuning_reserved_memory"),
    "overrides a list": (TUNING, {"postgresql_tuning_overrides": ["work_mem"]}, "postgresql_tuning_overrides"),
    # PostgreSQL 13 had it; 15, 17 and 18 do not.
    "override unknown to the version": (
        TUNING, {"postgresql_tuning_overrides": {"vacuum_cleanup_index_scale_factor": 0.1}}, "postgresql_tuning_overrides"),
    "override unknown anywhere": (
        TUNING, {"postgresql_tuning_overrides": {"no_such_parameter": 1}}, "postgresql_tuning_overrides"),
    "override size 16 GiB": (
        TUNING, {"postgresql_tuning_overrides": {"work_mem": "16 GiB"}}, "postgresql_tuning_overrides.work_mem"),
    "override size negative": (
        TUNING, {"postgresql_tuning_overrides": {"work_mem": "-4MB"}}, "postgresql_tuning_overrides.work_mem"),
    "override name with a newline": (
        TUNING, {"postgresql_tuning_overrides": {"work_mem\nfsync": "off"}}, "postgresql_tuning_overrides"),
    "override name with a quote": (
        TUNING, {"postgresql_tuning_overrides": {"work_mem'": "4MB"}}, "postgresql_tuning_overrides"),
    "override name with a #": (
        TUNING, {"postgresql_tuning_overrides": {"work_mem #": "4MB"}}, "postgresql_tuning_overrides"),
    "override value with a newline": (
        TUNING, {"postgresql_tuning_overrides": {"log_line_prefix": "%m\nfsync = off"}},
        "postgresql_tuning_overrides.log_line_prefix"),
    "override of a read-only parameter": (
        TUNING, {"postgresql_tuning_overrides": {"wal_segment_size": "32MB"}}, "postgresql_tuning_overrides"),
    "override of max_connections": (
        TUNING, {"postgresql_tuning_overrides": {"max_connections": 500}}, "postgresql_tuning_max_connections"),
    "override shared_buffers above memory": (
        TUNING, {"postgresql_tuning_overrides": {"shared_buffers": "64TB"}}, "postgresql_tuning_overrides.shared_buffers"),
    # Preload libraries pass postgres -C and a reload, then stop the server or every login: not installed, refused.
    "shared preload library not installed": (
        TUNING, {"postgresql_tuning_overrides": {"shared_preload_libraries": "headroom_missing_lib"}},
        "postgresql_tuning_overrides.shared_preload_libraries"),
    "session preload library not installed": (
        TUNING, {"postgresql_tuning_overrides": {"session_preload_libraries": "auto_explain, headroom_missing_lib"}},
        "postgresql_tuning_overrides.session_preload_libraries"),
    # Installed in $libdir, but local_preload_libraries only loads from $libdir/plugins.
    "local preload library outside plugins": (
        TUNING, {"postgresql_tuning_overrides": {"local_preload_libraries": "auto_explain"}},
        "postgresql_tuning_overrides.local_preload_libraries"),
    "backups kept negative": (TUNING, {"postgresql_tuning_backups_kept": -1}, "postgresql_tuning_backups_kept"),
    "include file outside the directory": (
        TUNING, {"postgresql_tuning_include_file": "../postgresql.conf"}, "postgresql_tuning_include_file"),
    "include file with a newline": (
        TUNING, {"postgresql_tuning_include_file": "50-headroom.conf\n"}, "postgresql_tuning_include_file"),
    "cluster with a newline": (TUNING, {"postgresql_tuning_clusters": ["15/main\n"]}, "postgresql_tuning_clusters"),
    "cluster the host lacks": (TUNING, {"postgresql_tuning_clusters": ["12/main"]}, "postgresql_tuning_clusters"),
    "allow_restart a word": (TUNING, {"postgresql_tuning_allow_restart": "maybe"}, "postgresql_tuning_allow_restart"),
    "unknown config mode": (TUNING, {"postgresql_tuning_config_mode": "partial"}, "postgresql_tuning_config_mode"),
    "ready timeout 0": (TUNING, {"postgresql_tuning_ready_timeout": 0}, "postgresql_tuning_ready_timeout"),
    "version 12": (POSTGRESQL, {"postgresql_version": "12"}, "postgresql_version"),
    "version with a command": (POSTGRESQL, {"postgresql_version": "15; rm -rf /"}, "postgresql_version"),
    "cluster name with a newline": (POSTGRESQL, {"postgresql_cluster_name": "main\n"}, "postgresql_cluster_name"),
    "cluster name with a quote": (POSTGRESQL, {"postgresql_cluster_name": "ma'in"}, "postgresql_cluster_name"),
    "package name with a command": (
        POSTGRESQL, {"postgresql_extra_packages": ["postgresql-contrib; rm -rf /"]}, "postgresql_extra_packages"),
    "pgbouncer database name with a quote": (
        PGBOUNCER, {"pgbouncer_databases": [{"name": "app'db", "users": ["app"]}]}, "pgbouncer_databases"),
    "pgbouncer database name with a newline": (
        PGBOUNCER, {"pgbouncer_databases": [{"name": "appdb\n", "users": ["app"]}]}, "pgbouncer_databases"),
    "pgbouncer unknown database target": (
        PGBOUNCER, {"pgbouncer_databases": [{**GOOD_POOL, "host": "db9.invalid"}]}, "pgbouncer_databases"),
    "pgbouncer server outside the inventory without its users' verifiers": (
        PGBOUNCER, {**OUTSIDE, "pgbouncer_user_verifiers": {}}, "pgbouncer_user_verifiers"),
    "pgbouncer server outside the inventory without TLS verify-full": (
        PGBOUNCER, {**OUTSIDE, "pgbouncer_server_tls_sslmode": "require"}, "pgbouncer_server_tls_sslmode verify-full"),
    "pgbouncer listen_addr not an address": (
        PGBOUNCER, {"pgbouncer_databases": [GOOD_POOL], "pgbouncer_listen_addr": "any interface"}, "pgbouncer_listen_addr"),
    "pgbouncer listen_addr with a newline": (
        PGBOUNCER, {"pgbouncer_databases": [GOOD_POOL], "pgbouncer_listen_addr": "127.0.0.1\nadmin_users = x"},
        "pgbouncer_listen_addr"),
    "pgbouncer port out of range": (
        PGBOUNCER, {"pgbouncer_databases": [GOOD_POOL], "pgbouncer_listen_port": 70000}, "pgbouncer_listen_port"),
    "pgbouncer negative max_client_conn": (
        PGBOUNCER, {"pgbouncer_databases": [GOOD_POOL], "pgbouncer_max_client_conn": -1}, "pgbouncer_max_client_conn"),
    "pgbouncer unknown pool mode": (
        PGBOUNCER, {"pgbouncer_databases": [GOOD_POOL], "pgbouncer_pool_mode": "sometimes"}, "pgbouncer_pool_mode"),
    "pgbouncer admin user with a quote": (
        PGBOUNCER, {"pgbouncer_databases": [GOOD_POOL], "pgbouncer_admin_users": ["admin'--"]}, "pgbouncer_admin_users"),
    "pgbouncer auth user with a newline": (
        PGBOUNCER, {"pgbouncer_databases": [GOOD_POOL], "pgbouncer_auth_user": "pgbouncer_auth\n"}, "pgbouncer_auth_user"),
}

# The cases whose answer comes from the host, not from the inputs alone.
ON_EVERY_PLATFORM = {
    "max_connections above the memory ceiling", "pools above the ceiling", "reserved memory above the host's",
    "override unknown to the version", "override of a read-only parameter", "override shared_buffers above memory",
    "shared preload library not installed", "session preload library not installed",
    "local preload library outside plugins", "cluster the host lacks", "version 12",
}
PLATFORMS = ["headroom-faults-debian12", "headroom-faults-debian13", "headroom-faults-forky"]
assert ON_EVERY_PLATFORM <= set(CASES), ON_EVERY_PLATFORM - set(CASES)


def cases_of(platform):
    """The cases a platform runs: those ON_EVERY_PLATFORM, and its turn of the others."""
    others = [case for case in sorted(CASES) if case not in ON_EVERY_PLATFORM]
    turn = PLATFORMS.index(platform)
    return sorted(ON_EVERY_PLATFORM | set(others[turn::len(PLATFORMS)]))


def _play(number, role, variables):
    """One case on every host: the role with the bad input (rescued), then the fingerprint after it."""
    failure = ("{{ ansible_failed_result.msg | default('') }} {{ ansible_failed_result.results | default([])"
               " | selectattr('failed', 'defined') | selectattr('failed') | map(attribute='msg') | join(' ') }}")
    return {
        "name": f"Bad input {number}",
        "hosts": "all",
        "gather_facts": False,
        "check_mode": role == PGBOUNCER,
        "tasks": [
            {"name": "Run the role with the bad input", "block": [
                {"name": "Run the role", "ansible.builtin.include_role": {"name": role}, "vars": variables},
                {"name": "Note that the run went through", "ansible.builtin.set_fact": {"outcome": {"failed": False}}},
            ], "rescue": [
                {"name": "Note the failure", "ansible.builtin.set_fact": {"outcome": {
                    "failed": True, "task": "{{ ansible_failed_task.name }}", "msg": failure}}},
            ]},
            {"name": "Fingerprint after", "ansible.builtin.shell": FINGERPRINT, "register": "after",
             "changed_when": False, "check_mode": False},
            {"name": "Keep the outcome", "ansible.builtin.set_fact": {"outcomes": (
                "{{ outcomes + [outcome | combine({'after': after.stdout})] }}")}},
        ],
    }


def _playbook(cases, results):
    """A first play takes the fingerprint and the facts (the pgbouncer role sizes from them); a last one
    writes every host's outcomes to the controller."""
    first = {"name": "Fingerprint before the first case", "hosts": "all", "gather_facts": True, "tasks": [
        {"name": "Fingerprint", "ansible.builtin.shell": FINGERPRINT, "register": "first", "changed_when": False,
         "check_mode": False},
        {"name": "Start the outcomes", "ansible.builtin.set_fact": {"outcomes": [], "initial": "{{ first.stdout }}"}},
    ]}
    last = {"name": "Keep the outcomes", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "Write them", "delegate_to": "localhost", "ansible.builtin.copy": {
            "dest": f"{results}/{{{{ inventory_hostname }}}}.json", "mode": "0644",
            "content": "{{ {'initial': initial, 'outcomes': outcomes} | to_json }}"}},
    ]}
    return [first, *(_play(n, *case[:2]) for n, case in enumerate(cases)), last]


_OUTCOMES = {}


def host_outcomes(host):
    """Every case of this host run once (the hosts may run side by side): by case id, failed, task, msg,
    before, after."""
    name = host.backend.get_hostname()
    if name not in _OUTCOMES:
        results = Path(tempfile.mkdtemp(prefix="headroom-faults-bad-input-"))
        names = cases_of(name)
        playbook = results / "bad-input.yml"
        playbook.write_text(json.dumps(_playbook([CASES[case] for case in names], results)))
        run = ansible_playbook(playbook, limit=name)
        written = results / f"{name}.json"
        assert written.exists(), run.stdout[-5000:]
        kept = json.loads(written.read_text())
        previous = [kept["initial"]] + [o["after"] for o in kept["outcomes"]]
        _OUTCOMES[name] = {case: {**o, "before": before} for case, o, before in zip(names, kept["outcomes"], previous)}
        shutil.rmtree(results)
    return _OUTCOMES[name]


@pytest.mark.parametrize(
    "case",
    sorted(CASES),
)
def test_bad_input_fails_before_any_change_and_names_the_variable(host, case):
    if case not in cases_of(host.backend.get_hostname()):
        pytest.skip(f"checked on the controller alone: runs on {next(p for p in PLATFORMS if case in cases_of(p))}")
    outcome = host_outcomes(host)[case]
    assert outcome["failed"], f"{case}: the run went through"
    assert outcome["after"] == outcome["before"], f"{case}: the host changed"
    assert CASES[case][2] in outcome["msg"], outcome["msg"]
