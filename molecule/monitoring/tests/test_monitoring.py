"""The monitoring role's live state, and its rules against scrapes recorded during a storm.

Each host runs a PostgreSQL server with its exporter and the fleet's rules file; forky also runs
PgBouncer with its exporter (Debian 12's does not run against PgBouncer 1.18). The storm: pgbench
clients straight to the server (slots over 95%), one session idle in transaction, and on forky
a pgbench storm through PgBouncer's 2-connection pool (clients wait). Both exporters are scraped
during it and the scrape becomes promtool's input series; the same for a calm scrape.
"""

import importlib.util
import re
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
_SPEC = importlib.util.spec_from_file_location("monitoring_filters", ROOT / "plugins/filter/monitoring.py")
FILTERS = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(FILTERS)

RULES = "/etc/prometheus/rules.d/headroom.yml"
CONFIG_DIR = "/etc/headroom/monitoring"
BENCH_PASSWORD = "headroom-bench-only"
# The metrics the rules read: promtool gets only these series of a scrape.
RULE_METRICS = {
    "pg_up", "pg_exporter_last_scrape_error", "pg_stat_activity_count", "pg_stat_activity_max_tx_duration", "pg_settings_max_connections",
    "pg_settings_superuser_reserved_connections", "pg_settings_reserved_connections",
    "pgbouncer_up", "pgbouncer_pools_client_waiting_connections", "pgbouncer_pools_client_maxwait_seconds",
}
# Where the recorded scrapes and promtool test files are kept for a look after the run.
REPORTS = ROOT / "reports" / "monitoring"


def name(host):
    return host.backend.get_hostname()


def has_pgbouncer(host):
    return name(host).endswith("forky")


def scrape(host, port):
    return host.check_output(
        "python3 -c %s",
        f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=20).read().decode())",
    )


def test_the_exporter_role_is_in_pg_monitor_and_nothing_more(pg):
    row = pg.sql(
        "SELECT pg_has_role('postgres_exporter', 'pg_monitor', 'MEMBER'), rolsuper, rolcreaterole, rolcreatedb, "
        "rolreplication, rolbypassrls, rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'postgres_exporter'"
    )
    assert row == "t|f|f|f|f|f|t"


def test_the_pgbouncer_stats_role_cannot_log_in_to_postgresql_and_monitors_nothing(pg):
    row = pg.sql(
        "SELECT pg_has_role('pgbouncer_exporter', 'pg_monitor', 'MEMBER'), rolsuper, rolconnlimit, "
        "rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'pgbouncer_exporter'"
    )
    assert row == "f|f|0|t"


def test_exporters_listen_on_loopback_only(host):
    listening = host.check_output("ss -Hltn")
    ports = {"9187": "postgres"} | ({"9127": "pgbouncer"} if has_pgbouncer(host) else {})
    for port in ports:
        addresses = re.findall(rf"^\S+\s+\d+\s+\d+\s+(\S+):{port}\s", listening, re.M)
        assert addresses == ["127.0.0.1"], (port, listening)
    if not has_pgbouncer(host):
        assert ":9127 " not in listening


def test_secrets_are_readable_by_their_exporter_only(host):
    pgpass = host.file(f"{CONFIG_DIR}/postgres_exporter.pgpass")
    assert (pgpass.user, pgpass.group, pgpass.mode) == ("prometheus", "prometheus", 0o600)
    # The password (with : and \ in it) is escaped for libpq, and no other file holds it.
    assert pgpass.content_string.strip().endswith(r"headroom-monitoring\:only\\1")
    default = host.file("/etc/default/prometheus-postgres-exporter")
    assert (default.user, default.mode) == ("root", 0o644)
    assert "monitoring:only" not in default.content_string
    if has_pgbouncer(host):
        pgpass = host.file(f"{CONFIG_DIR}/pgbouncer_exporter.pgpass")
        assert (pgpass.user, pgpass.group, pgpass.mode) == ("postgres", "postgres", 0o600)
        assert "headroom-pgbouncer-stats-only" not in host.file("/etc/default/prometheus-pgbouncer-exporter").content_string


def test_exporters_run_enabled_and_logged_in(host):
    assert host.service("prometheus-postgres-exporter").is_enabled
    assert host.service("prometheus-postgres-exporter").is_running
    metrics = scrape(host, 9187)
    # Settings series exist only after a login; 0.19 labels pg_up, 0.11 drops it with --constantLabels.
    assert re.search(r"^pg_settings_max_connections\{.*\} 100$", metrics, re.M)
    assert not re.search(r"^pg_up(\{.*\})? 0$", metrics, re.M)
    assert re.search(r"^pg_exporter_last_scrape_error\{.*\} 0$", metrics, re.M)
    assert f'headroom_server="{name(host)}"' in metrics
    if has_pgbouncer(host):
        assert host.service("prometheus-pgbouncer-exporter").is_running
        assert re.search(r"^pgbouncer_up 1$", scrape(host, 9127), re.M)
    else:
        assert not host.service("prometheus-pgbouncer-exporter").is_running


def test_the_rules_file_passes_promtool_and_no_prometheus_server_was_started(host):
    out = host.check_output(f"promtool check rules {RULES}")
    assert "SUCCESS" in out
    rules = yaml.safe_load(host.file(RULES).content_string)
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"HeadroomConnectionSlotsWarning", "HeadroomConnectionSlotsCritical", "HeadroomDemandAbovePlan",
            "HeadroomIdleInTransaction", "HeadroomPgBouncerClientsWaiting", "HeadroomPgBouncerMaxWait"} <= alerts
    # 100 - 3 = 97 ordinary slots (role inputs; no reserved_connections): 80% and 95%.
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert f'sum by (headroom_server) (pg_stat_activity_count{{headroom_server="{name(host)}"}}) >= 92.15' in expressions
    assert not host.service("prometheus").is_running


def _series(host, texts):
    instance = name(host)
    out = []
    for port, text in texts.items():
        job = "postgres" if port == 9187 else "pgbouncer"
        out += FILTERS.prometheus_scrape_series(text, {"job": job, "instance": f"{instance}:{port}"}, RULE_METRICS)
    return out


class _IndentedDumper(yaml.SafeDumper):
    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _promtool_test(host, label, series, expected):
    """A promtool rules test: the scrape held for 15 minutes, the firing alerts at 10 minutes."""
    document = {
        "rule_files": [RULES],
        "evaluation_interval": "1m",
        "tests": [{
            "name": label,
            "interval": "1m",
            "input_series": [{"series": s["series"], "values": f"{s['value']:g}+0x15"} for s in series],
            "promql_expr_test": [{
                "expr": 'count by (alertname, headroom_server) (ALERTS{alertstate="firing"})',
                "eval_time": "10m",
                "exp_samples": [{"labels": labels, "value": 1} for labels in sorted(expected)],
            }],
        }],
    }
    # Indented and with a document start, so `yamllint --strict .` (make lint) passes over reports/ too.
    text = yaml.dump(document, Dumper=_IndentedDumper, sort_keys=False, explicit_start=True, width=1000)
    path = f"/tmp/headroom-promtool-{label}.yml"
    host.run(f"cat > {path} <<'EOF'\n{text}\nEOF")
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"{name(host)}-{label}.promtool.yml").write_text(text)
    result = host.run(f"promtool test rules {path}")
    print(f"promtool test rules ({name(host)}, {label}):\n{result.stdout}{result.stderr}")
    assert result.rc == 0, result.stdout + result.stderr


def _used(series, host):
    return sum(s["value"] for s in series
               if s["series"].startswith("pg_stat_activity_count{") and f'headroom_server="{name(host)}"' in s["series"])


def test_a_calm_scrape_fires_no_alert(host):
    texts = {9187: scrape(host, 9187)} | ({9127: scrape(host, 9127)} if has_pgbouncer(host) else {})
    series = _series(host, texts)
    assert _used(series, host) < 30
    _promtool_test(host, "calm", series, [])


def test_a_storm_fires_the_slot_demand_idle_and_pgbouncer_alerts(host):
    server = name(host)
    version = host.check_output("ls /usr/lib/postgresql | sort -n | tail -1")
    pgbench = f"/usr/lib/postgresql/{version}/bin/pgbench"
    host.run("echo 'SELECT pg_sleep(1);' > /tmp/headroom-sleep.sql")
    env = f"PGPASSWORD={BENCH_PASSWORD}"
    # One session idle in transaction for 60 s (its transaction's age is what the rule watches).
    host.run(f"sh -c \"(echo 'BEGIN;'; echo 'SELECT 1;'; sleep 60) | {env} psql -Xq -h 127.0.0.1 -U bench bench "
             ">/dev/null 2>&1 &\"")
    direct = 89 if has_pgbouncer(host) else 92
    host.run(f"sh -c '{env} {pgbench} -n -c {direct} -j 4 -T 45 -f /tmp/headroom-sleep.sql -h 127.0.0.1 -U bench bench "
             ">/tmp/headroom-direct.log 2>&1 &'")
    if has_pgbouncer(host):
        # 40 clients against a pool of 2: cl_waiting, and maxwait grows past 5 s.
        host.run(f"sh -c '{env} {pgbench} -n -c 40 -j 2 -T 45 -f /tmp/headroom-sleep.sql -h 127.0.0.1 -p 6432 "
                 "-U bench bench >/tmp/headroom-pgbouncer.log 2>&1 &'")
    time.sleep(20)
    texts = {9187: scrape(host, 9187)} | ({9127: scrape(host, 9127)} if has_pgbouncer(host) else {})
    REPORTS.mkdir(parents=True, exist_ok=True)
    for port, text in texts.items():
        (REPORTS / f"{server}-storm-{port}.prom").write_text(text)
    series = _series(host, texts)
    used = _used(series, host)
    print(f"{server}: {used:g} client backends in the storm scrape")
    assert used >= 93, f"the storm reached only {used} client backends (97 ordinary slots; critical at 92.15)"
    expected = [
        f'{{alertname="HeadroomConnectionSlotsWarning", headroom_server="{server}"}}',
        f'{{alertname="HeadroomConnectionSlotsCritical", headroom_server="{server}"}}',
        f'{{alertname="HeadroomDemandAbovePlan", headroom_server="{server}"}}',
        f'{{alertname="HeadroomIdleInTransaction", headroom_server="{server}"}}',
    ]
    if has_pgbouncer(host):
        waiting = [s for s in series if s["series"].startswith("pgbouncer_pools_client_waiting_connections{") and 'database="bench"' in s["series"]]
        maxwait = [s for s in series if s["series"].startswith("pgbouncer_pools_client_maxwait_seconds{") and 'database="bench"' in s["series"]]
        print(f"{server}: PgBouncer cl_waiting {[s['value'] for s in waiting]}, maxwait {[s['value'] for s in maxwait]}")
        expected += ['{alertname="HeadroomPgBouncerClientsWaiting"}', '{alertname="HeadroomPgBouncerMaxWait"}']
    _promtool_test(host, "storm", series, expected)
    # pgbench ends on its own (-T 45); wait for it so the next scenario step finds a quiet server.
    host.run("sh -c 'while pgrep -x pgbench >/dev/null; do sleep 1; done'")
