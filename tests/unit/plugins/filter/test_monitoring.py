"""The monitoring filters: rules from the plan, the role's refusals, SCRAM verifiers and scrapes."""

import base64
import hashlib
import hmac
import re
from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.monitoring import (
    THRESHOLDS,
    FilterModule,
    monitoring_plan_servers,
    monitoring_refusals,
    monitoring_rules,
    prometheus_scrape_series,
    scram_matches,
)

ROLE = Path(__file__).resolve().parents[4] / "roles/monitoring"


def rules_by_alert(document, server=None):
    return {
        (rule["alert"], rule["labels"].get("headroom_server")): rule
        for group in document["groups"]
        for rule in group["rules"]
        if server is None or rule["labels"].get("headroom_server") in (server, None)
    }


def test_the_plugin_registers_its_filters():
    assert set(FilterModule().filters()) == {
        "monitoring_rules", "monitoring_plan_servers", "monitoring_refusals", "scram_matches", "prometheus_scrape_series",
    }


def test_the_role_default_thresholds_are_the_filters_defaults():
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    assert defaults["monitoring_thresholds"] == THRESHOLDS


@pytest.mark.parametrize(
    "server, warning, critical",
    [
        # 100 - 3 superuser slots = 97 ordinary: 80% is 77.6, 95% is 92.15 (check_postgres counts the same way).
        ({"max_connections": 100}, "77.6", "92.15"),
        # reserved_connections (PostgreSQL 16+) come off too: 120 - 3 - 2 = 115.
        ({"max_connections": 120, "reserved_connections": 2}, "92", "109.25"),
        # A server with superuser_reserved_connections 0 gives all its slots to ordinary roles.
        ({"max_connections": 50, "superuser_reserved_connections": 0}, "40", "47.5"),
    ],
)
def test_slot_alerts_fire_at_80_and_95_percent_of_the_ordinary_slots(server, warning, critical):
    rules = rules_by_alert(monitoring_rules({"db1": server}))
    used = 'sum by (headroom_server) (pg_stat_activity_count{headroom_server="db1"})'
    assert rules[("HeadroomConnectionSlotsWarning", "db1")]["expr"] == f"{used} >= {warning}"
    assert rules[("HeadroomConnectionSlotsCritical", "db1")]["expr"] == f"{used} >= {critical}"
    assert rules[("HeadroomConnectionSlotsCritical", "db1")]["labels"]["severity"] == "critical"
    assert rules[("HeadroomConnectionSlotsWarning", "db1")]["for"] == "2m"


def test_thresholds_can_be_overridden_key_by_key():
    rules = rules_by_alert(monitoring_rules(
        {"db1": {"max_connections": 100, "demand": 40}},
        {"slots_warning": 0.5, "demand_for_minutes": 15, "pgbouncer_maxwait_seconds": 30},
    ))
    assert rules[("HeadroomConnectionSlotsWarning", "db1")]["expr"].endswith(">= 48.5")
    assert rules[("HeadroomConnectionSlotsCritical", "db1")]["expr"].endswith(">= 92.15")
    assert rules[("HeadroomDemandAbovePlan", "db1")]["for"] == "15m"
    assert rules[("HeadroomPgBouncerMaxWait", None)]["expr"].endswith("> 30")


def test_a_server_with_a_planned_demand_gets_a_demand_rule_and_one_without_gets_none():
    rules = rules_by_alert(monitoring_rules({"db1": {"max_connections": 100, "demand": 40}, "db2": {"max_connections": 100}}))
    assert rules[("HeadroomDemandAbovePlan", "db1")]["expr"].endswith("> 40")
    assert ("HeadroomDemandAbovePlan", "db2") not in rules


def test_a_server_without_planned_slots_is_watched_against_its_live_settings():
    expr = rules_by_alert(monitoring_rules({"db1": {}}))[("HeadroomConnectionSlotsWarning", "db1")]["expr"]
    assert "pg_settings_max_connections{headroom_server=\"db1\"}" in expr
    assert "pg_settings_superuser_reserved_connections" in expr
    # PostgreSQL 15 and older have no reserved_connections series: it counts as 0.
    assert "or vector(0)" in expr
    assert expr.startswith('sum by (headroom_server) (pg_stat_activity_count{headroom_server="db1"}) >= 0.8 * (')


def test_idle_in_transaction_and_pgbouncer_rules_use_the_exporters_metric_names():
    rules = rules_by_alert(monitoring_rules({"db1": {"max_connections": 100}}))
    assert 'pg_stat_activity_max_tx_duration{headroom_server!="", state=~"idle in transaction.*"}) > 1800' in (
        rules[("HeadroomIdleInTransaction", None)]["expr"]
    )
    assert rules[("HeadroomPgBouncerClientsWaiting", None)]["expr"] == (
        "sum by (instance, database) (pgbouncer_pools_client_waiting_connections) > 0"
    )
    assert rules[("HeadroomPgBouncerClientsWaiting", None)]["for"] == "2m"
    assert "pgbouncer_pools_client_maxwait_seconds" in rules[("HeadroomPgBouncerMaxWait", None)]["expr"]


def test_the_pgbouncer_group_can_be_left_out():
    document = monitoring_rules({"db1": {"max_connections": 100}}, None, False)
    assert [group["name"] for group in document["groups"]] == ["headroom-postgresql"]


@pytest.mark.parametrize(
    "servers, thresholds, message",
    [
        ({"db1": {"max_connections": 3}}, None, "leaves no ordinary slot"),
        ({"db1": {"max_connections": "lots"}}, None, "max_connections must be a number"),
        ({"db 1": {}}, None, "is not a host name"),
        ({"db1": {}}, {"slots_warning": 1.5}, "slots_warning must be between 0.01 and 1, got 1.5"),
        ({"db1": {}}, {"slots_warning": 0.96}, "slots_warning 0.96 must not be above slots_critical 0.95"),
        ({"db1": {}}, {"slots_for_minutes": 1.5}, "slots_for_minutes must be a whole number"),
        ({"db1": {}}, {"cl_waiting": 1}, "unknown keys ['cl_waiting']"),
    ],
)
def test_bad_servers_and_thresholds_are_refused_naming_the_key_and_value(servers, thresholds, message):
    with pytest.raises(AnsibleFilterError, match=re.escape(message)):
        monitoring_rules(servers, thresholds)


PLAN = {
    "servers": {
        "db1": {"max_connections": 120, "superuser_reserved_connections": 3, "reserved_connections": 2,
                "demand": 96, "contributors": [{"name": "pgb1"}]},
        # Nobody declared a client: the plan's demand is a count of nothing, not a limit.
        "db2": {"max_connections": 100, "superuser_reserved_connections": 3, "reserved_connections": 0,
                "demand": 0, "contributors": []},
        # Over its ceiling: the plan has no settings for it.
        "db3": {"max_connections": None, "demand": 500, "contributors": [{"name": "x"}]},
    }
}


def test_plan_servers_come_from_the_plan_and_the_rest_from_role_inputs():
    servers = monitoring_plan_servers(PLAN, ["db1", "db2", "db3", "db4"], {
        "db3": {"max_connections": None, "reserved_connections": 0, "demand": None},
        "db4": {"max_connections": 80, "reserved_connections": 0, "demand": 20},
    })
    assert servers == {
        "db1": {"max_connections": 120, "superuser_reserved_connections": 3, "reserved_connections": 2, "demand": 96},
        "db2": {"max_connections": 100, "superuser_reserved_connections": 3, "reserved_connections": 0, "demand": None},
        "db3": {"reserved_connections": 0},
        "db4": {"max_connections": 80, "reserved_connections": 0, "demand": 20},
    }
    rules = rules_by_alert(monitoring_rules(servers))
    assert rules[("HeadroomConnectionSlotsCritical", "db1")]["expr"].endswith(">= 109.25")
    assert "pg_settings_max_connections" in rules[("HeadroomConnectionSlotsCritical", "db3")]["expr"]


GOOD = {
    "postgres_exporter": True, "postgres_exporter_user": "postgres_exporter", "postgres_exporter_password": "pw",
    "postgres_exporter_listen_address": "127.0.0.1", "postgres_exporter_port": 9187,
    "postgres_exporter_tls_cert_file": "", "postgres_exporter_tls_key_file": "",
    "pgbouncer_exporter": True, "pgbouncer_exporter_user": "pgbouncer_exporter", "pgbouncer_exporter_password": "pw",
    "pgbouncer_exporter_listen_address": "127.0.0.1", "pgbouncer_exporter_port": 9127,
    "pgbouncer_exporter_tls_cert_file": "", "pgbouncer_exporter_tls_key_file": "",
    "pgbouncer_stats_users": ["pgbouncer_exporter"], "debian_release": "13", "thresholds": {},
}


def test_the_role_builds_every_input_the_refusals_read():
    inputs = yaml.safe_load((ROLE / "vars/main.yml").read_text())["__monitoring_inputs"]
    assert set(inputs) == set(GOOD)


def test_good_inputs_pass():
    assert monitoring_refusals(GOOD) == []


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"postgres_exporter_listen_address": "0.0.0.0"},
         "monitoring_postgres_exporter_listen_address '0.0.0.0' is beyond loopback: set monitoring_postgres_exporter_tls_cert_file"),
        ({"pgbouncer_exporter_listen_address": "10.0.0.5"}, "monitoring_pgbouncer_exporter_listen_address '10.0.0.5' is beyond loopback"),
        ({"postgres_exporter_listen_address": "10.0.0.5", "postgres_exporter_tls_cert_file": "/etc/ssl/m.pem"},
         "monitoring_postgres_exporter_tls_cert_file and _tls_key_file go together"),
        ({"postgres_exporter_listen_address": "0.0.0.0:9187"}, "is not an address or host name (one, no port)"),
        ({"postgres_exporter_port": 70000}, "monitoring_postgres_exporter_port 70000 must be a TCP port, 1 to 65535."),
        ({"postgres_exporter_user": "exporter; DROP"}, "monitoring_postgres_exporter_user 'exporter; DROP' must be a role name"),
        ({"postgres_exporter_password": ""}, "monitoring_postgres_exporter_password is empty"),
        ({"debian_release": "12"}, "monitoring_pgbouncer_exporter is true on Debian 12"),
        ({"pgbouncer_stats_users": ["monitor"]},
         "monitoring_pgbouncer_exporter_user 'pgbouncer_exporter' is not in pgbouncer_stats_users ['monitor']"),
        ({"thresholds": {"slots_critical": 2}}, "monitoring_thresholds.slots_critical must be between 0.01 and 1, got 2"),
    ],
)
def test_bad_inputs_are_refused_naming_the_variable_and_the_value(changes, message):
    refusals = monitoring_refusals({**GOOD, **changes})
    assert any(message in refusal for refusal in refusals), refusals


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.1.1", "::1", "localhost"])
def test_loopback_needs_no_tls(address):
    assert monitoring_refusals({**GOOD, "postgres_exporter_listen_address": address}) == []


def test_beyond_loopback_with_a_certificate_and_key_is_allowed():
    inputs = {**GOOD, "postgres_exporter_listen_address": "0.0.0.0",
              "postgres_exporter_tls_cert_file": "/etc/ssl/m.pem", "postgres_exporter_tls_key_file": "/etc/ssl/m.key"}
    assert monitoring_refusals(inputs) == []


def test_an_exporter_that_does_not_run_is_not_checked():
    assert monitoring_refusals({**GOOD, "pgbouncer_exporter": False, "debian_release": "12", "pgbouncer_stats_users": []}) == []


def _b64(raw):
    return base64.b64encode(raw).decode()


def _verifier(password, salt=b"0123456789abcdef", iterations=4096):
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", hashlib.sha256).digest()).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored)}:{_b64(server)}"


@pytest.mark.parametrize(
    "verifier, password, matches",
    [
        (_verifier("s3cret"), "s3cret", True),
        (_verifier("s3cret"), "s3cret ", False),
        (_verifier("a:b\\c"), "a:b\\c", True),
        ("md5" + "0" * 32, "s3cret", False),
        (None, "s3cret", False),
        ("", "", False),
    ],
)
def test_scram_matches_only_the_password_the_verifier_was_made_from(verifier, password, matches):
    assert scram_matches(verifier, password) is matches


SCRAPE = """# HELP pg_up Whether the last scrape of metrics from PostgreSQL was able to connect to the server (1 for yes, 0 for no).
# TYPE pg_up gauge
pg_up 1
pg_stat_activity_count{datname="bench",headroom_server="db1",server="127.0.0.1:5432",state="idle in transaction"} 1
pg_stat_activity_count{application_name="pgbench",datname="bench",headroom_server="db1",state="active",usename="bench"} 92
pgbouncer_pools_client_maxwait_seconds{database="bench",user="bench"} 9.5
go_goroutines 12
"""


def test_a_scrape_becomes_promtool_input_series_with_the_scrape_labels():
    series = prometheus_scrape_series(SCRAPE, {"job": "postgres", "instance": "db1:9187"},
                                      ["pg_up", "pg_stat_activity_count", "pgbouncer_pools_client_maxwait_seconds"])
    assert series == [
        {"series": 'pg_up{instance="db1:9187", job="postgres"}', "value": 1.0},
        {"series": 'pg_stat_activity_count{datname="bench", headroom_server="db1", instance="db1:9187", job="postgres", '
                   'server="127.0.0.1:5432", state="idle in transaction"}', "value": 1.0},
        {"series": 'pg_stat_activity_count{application_name="pgbench", datname="bench", headroom_server="db1", '
                   'instance="db1:9187", job="postgres", state="active", usename="bench"}', "value": 92.0},
        {"series": 'pgbouncer_pools_client_maxwait_seconds{database="bench", instance="db1:9187", job="postgres", '
                   'user="bench"}', "value": 9.5},
    ]


def test_a_line_that_is_not_a_sample_is_refused():
    with pytest.raises(AnsibleFilterError, match="not a sample line"):
        prometheus_scrape_series("pg_up{broken 1\n")
