import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pgbouncer_layout import (
    pgbouncer_auth_servers,
    pgbouncer_files,
    pgbouncer_instances,
    pgbouncer_targets,
)

SIZED = {"pool_size": 10, "reserve_pool_size": 2, "max_db_connections": 12}
HOSTVARS = {"pgb1": {}, "db1": {"ansible_host": "10.0.0.5"}, "db2": {}}
EXTERNAL = {"orders-db": {"address": "orders.example.com", "port": 6432}}


def targets(databases, host="pgb1"):
    return pgbouncer_targets(databases, {"databases": [SIZED] * len(databases)}, host, HOSTVARS, EXTERNAL,
                             "/var/run/postgresql")


def test_each_database_is_reached_as_the_role_writes_it():
    own, inventory, external, by_address, unknown = targets([
        {"name": "local", "users": ["a"]},
        {"name": "app", "host": "db1", "dbname": "app_prod", "users": ["a", "b"]},
        {"name": "orders", "host": "orders-db", "users": 3},
        {"name": "orders2", "host": "orders.example.com", "users": ["c"]},
        {"name": "other", "host": "elsewhere", "port": 5433, "users": ["d"]},
    ])
    assert (own["address"], own["socket"], own["server"], own["port"]) == ("/var/run/postgresql", True, "pgb1", 5432)
    assert (inventory["address"], inventory["server"], inventory["dbname"]) == ("10.0.0.5", "db1", "app_prod")
    assert (external["address"], external["server"], external["port"]) == ("orders.example.com", "", 6432)
    assert (by_address["address"], by_address["server"]) == ("orders.example.com", "")
    assert (unknown["address"], unknown["server"], unknown["port"]) == ("elsewhere", "", 5433)
    assert own["pool_size"] == 10 and own["max_db_connections"] == 12


def test_a_socket_directory_or_loopback_name_is_this_hosts_server():
    socket, loopback = targets([{"name": "s", "host": "/run/pg", "users": 1}, {"name": "l", "host": "127.0.0.1", "users": 1}])
    assert (socket["server"], socket["socket"]) == ("pgb1", True)
    assert (loopback["server"], loopback["socket"]) == ("pgb1", False)


def test_targets_refuse_a_sizing_of_other_databases():
    with pytest.raises(Exception, match="pgbouncer_tune's result"):
        pgbouncer_targets([{"name": "a", "users": 1}], {"databases": []}, "pgb1", HOSTVARS, {}, "/s")


def test_auth_servers_in_order_with_the_admin_and_stats_users_on_the_first_only():
    found = targets([
        {"name": "app", "host": "db1", "users": ["a", "b"]},
        {"name": "local", "users": ["b", "c"]},
        {"name": "app2", "host": "db1", "users": ["a", "d"]},
        {"name": "orders", "host": "orders-db", "users": ["e"]},
    ])
    userlist = pgbouncer_auth_servers(found, "userlist", ["admin"], ["stats"])
    assert [(s["name"], s["users"], s["socket"], len(s["targets"])) for s in userlist] == [
        ("db1", ["a", "b", "d", "admin", "stats"], False, 2), ("pgb1", ["b", "c"], True, 1)]
    auth_query = pgbouncer_auth_servers(found, "auth_query", ["admin"], [])
    assert [(s["name"], s["users"]) for s in auth_query] == [("db1", ["admin"]), ("pgb1", [])]


def test_one_process_keeps_debians_unit_and_paths_and_several_are_numbered():
    assert pgbouncer_instances(1, "/etc/pgbouncer", "/var/run/postgresql", "/var/log/postgresql") == [{
        "id": 0, "unit": "pgbouncer.service", "ini": "/etc/pgbouncer/pgbouncer.ini", "unix_socket_dir": "/var/run/postgresql",
        "pidfile": "/var/run/postgresql/pgbouncer.pid", "logfile": "/var/log/postgresql/pgbouncer.log"}]
    two = pgbouncer_instances("2", "/etc/pgbouncer", "/var/run/postgresql", "/var/log/postgresql")
    assert [(i["id"], i["unit"], i["ini"], i["unix_socket_dir"]) for i in two] == [
        (1, "pgbouncer@1.service", "/etc/pgbouncer/pgbouncer-1.ini", "/run/pgbouncer-1"),
        (2, "pgbouncer@2.service", "/etc/pgbouncer/pgbouncer-2.ini", "/run/pgbouncer-2")]
    with pytest.raises(Exception, match="processes must be 1 or more"):
        pgbouncer_instances(0, "/e", "/s", "/l")


def test_one_process_renders_its_userlist_drop_in_ini_and_wants_its_last_good_copy():
    instances = pgbouncer_instances(1, "/etc/pgbouncer", "/var/run/postgresql", "/var/log/postgresql")
    files = pgbouncer_files(instances, "/etc/pgbouncer", "postgres", ".last-good")
    assert [(f["kind"], f["path"], f["template"]) for f in files] == [
        ("userlist", "/etc/pgbouncer/userlist.txt", "userlist.txt.j2"),
        ("unit", "/etc/systemd/system/pgbouncer.service.d/headroom-limits.conf", "limits.conf.j2"),
        ("ini", "/etc/pgbouncer/pgbouncer.ini", "pgbouncer.ini.j2"),
        ("last_good", "/etc/pgbouncer/pgbouncer.ini.last-good", "pgbouncer.ini.j2"),
    ]
    assert {(f["owner"], f["group"], f["mode"]) for f in files if f["kind"] != "unit"} == {("postgres", "postgres", "0640")}
    assert (files[1]["owner"], files[1]["group"], files[1]["mode"]) == ("root", "root", "0644")
    assert files[2]["vars"] == files[3]["vars"] == {"instance": instances[0]}


def test_several_processes_add_the_template_unit_and_an_ini_each():
    instances = pgbouncer_instances(2, "/etc/pgbouncer", "/var/run/postgresql", "/var/log/postgresql")
    files = pgbouncer_files(instances, "/etc/pgbouncer", "postgres", ".last-good")
    assert [f["path"] for f in files if f["kind"] == "unit"] == [
        "/etc/systemd/system/pgbouncer@.service.d/headroom-limits.conf", "/etc/systemd/system/pgbouncer@.service"]
    assert [(f["path"], f["unit"]) for f in files if f["kind"] == "ini"] == [
        ("/etc/pgbouncer/pgbouncer-1.ini", "pgbouncer@1.service"), ("/etc/pgbouncer/pgbouncer-2.ini", "pgbouncer@2.service")]
    with pytest.raises(AnsibleFilterError, match="pgbouncer_files: instances"):
        pgbouncer_files([], "/etc/pgbouncer", "postgres", ".last-good")
