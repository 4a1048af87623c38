"""The monitoring filters: Prometheus alert rules from the fleet plan, the role's refusals, SCRAM and scrapes.

``monitoring_rules`` turns each server's planned slots and demand into alert rules on the
metric names of Debian's exporters (checked from live scrapes of prometheus-postgres-exporter
0.11.1, 0.17.1 and 0.19.1 and prometheus-pgbouncer-exporter 0.10.2 and 0.12.0 in Debian 12, 13
and forky; roles/monitoring/README.md):

* used slots: ``sum(pg_stat_activity_count)``, the client backends with a database and a
  state, against the ordinary slots ``max_connections - superuser_reserved_connections -
  reserved_connections``. That is check_postgres's ``backends`` convention (its percentages
  are of max_connections minus superuser_reserved_connections; its default critical is 95%);
  the warning at 80% is this project's capacity flag (connection_budget_capacity_thresholds);
* idle in transaction: ``pg_stat_activity_max_tx_duration`` of the idle-in-transaction states
  (the age of the oldest such transaction), 300 s as capacity.yml flags it;
* PgBouncer: ``pgbouncer_pools_client_waiting_connections`` above 0 for some minutes (cl_waiting)
  and ``pgbouncer_pools_client_maxwait_seconds`` (the oldest waiting client's wait);
* demand: client backends above the demand the plan sized max_connections for.

Servers are told apart by the label ``headroom_server`` the role gives every series of a
server's exporter (``--constantLabels``), so a rule needs no relabelling in Prometheus.
"""

import hashlib
import hmac
import math
import re
from base64 import b64decode
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_inputs import SCRAM_VERIFIER

#: Defaults of the thresholds (roles/monitoring/defaults/main.yml: monitoring_thresholds).
THRESHOLDS = {
    "slots_warning": 0.8,
    "slots_critical": 0.95,
    "slots_for_minutes": 2,
    "idle_in_transaction_seconds": 1800,
    "pgbouncer_waiting_minutes": 2,
    "pgbouncer_maxwait_seconds": 5,
    "demand_for_minutes": 5,
}
#: The label each server's series carry (the postgres exporter's --constantLabels).
SERVER_LABEL = "headroom_server"
#: PostgreSQL's default superuser_reserved_connections (facts.md).
DEFAULT_SUPERUSER_RESERVED = 3
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*\Z")
_LOOPBACK = re.compile(r"^(127[.][0-9]+[.][0-9]+[.][0-9]+|::1|\[::1\]|localhost)\Z")
_ADDRESS = re.compile(r"^([A-Za-z0-9_.-]+|\[?[0-9A-Fa-f:]+\]?)\Z")
_ROLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def _number(value, what, minimum=None, maximum=None, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError) as err:
            raise AnsibleFilterError(f"{what} must be a number, got {value!r}") from err
    if math.isnan(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise AnsibleFilterError(f"{what} must be between {minimum} and {maximum}, got {value!r}")
    if integer and int(value) != value:
        raise AnsibleFilterError(f"{what} must be a whole number, got {value!r}")
    return int(value) if integer else value


def rules_thresholds(thresholds):
    """The thresholds with their defaults, each checked: shares in (0, 1], minutes and seconds positive."""
    if thresholds is None:
        thresholds = {}
    if not isinstance(thresholds, Mapping):
        raise AnsibleFilterError(f"monitoring_thresholds must be a mapping, got {thresholds!r}")
    unknown = sorted(set(thresholds) - set(THRESHOLDS))
    if unknown:
        raise AnsibleFilterError(f"monitoring_thresholds: unknown keys {unknown}; allowed: {sorted(THRESHOLDS)}")
    out = dict(THRESHOLDS) | dict(thresholds)
    for key in ("slots_warning", "slots_critical"):
        out[key] = _number(out[key], f"monitoring_thresholds.{key}", 0.01, 1)
    if out["slots_warning"] > out["slots_critical"]:
        raise AnsibleFilterError(
            f"monitoring_thresholds.slots_warning {out['slots_warning']} must not be above "
            f"slots_critical {out['slots_critical']}"
        )
    for key in ("slots_for_minutes", "pgbouncer_waiting_minutes", "demand_for_minutes"):
        out[key] = _number(out[key], f"monitoring_thresholds.{key}", 0, 1440, integer=True)
    for key in ("idle_in_transaction_seconds", "pgbouncer_maxwait_seconds"):
        out[key] = _number(out[key], f"monitoring_thresholds.{key}", 0, 86400)
    return out


def _ordinary_slots(name, server):
    """max_connections - superuser_reserved_connections - reserved_connections, or None when unknown."""
    if server.get("max_connections") is None:
        return None
    what = f"server {name}"
    max_connections = _number(server["max_connections"], f"{what}: max_connections", 1, 262143, integer=True)
    superuser = _number(
        server.get("superuser_reserved_connections", DEFAULT_SUPERUSER_RESERVED) or 0,
        f"{what}: superuser_reserved_connections", 0, 262143, integer=True,
    )
    reserved = _number(server.get("reserved_connections") or 0, f"{what}: reserved_connections", 0, 262143, integer=True)
    slots = max_connections - superuser - reserved
    if slots < 1:
        raise AnsibleFilterError(
            f"{what}: max_connections {max_connections} leaves no ordinary slot after "
            f"superuser_reserved_connections {superuser} and reserved_connections {reserved}"
        )
    return slots


def _duration(minutes):
    return f"{minutes}m"


def _number_text(value):
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _slot_rule(name, slots, share, severity, thresholds, used):
    limit = share * slots
    return {
        "alert": f"HeadroomConnectionSlots{severity.capitalize()}",
        "expr": f"{used} >= {_number_text(round(limit, 2))}",
        "for": _duration(thresholds["slots_for_minutes"]),
        "labels": {"severity": severity, SERVER_LABEL: name},
        "annotations": {
            "summary": f"{name}: {int(round(share * 100))}% of its ordinary connection slots in use",
            "description": (
                f"{{{{ $value }}}} client backends on {name}, {int(round(share * 100))}% of its {slots} ordinary slots "
                "(max_connections - superuser_reserved_connections - reserved_connections) is "
                f"{_number_text(round(limit, 2))}. New logins fail with 'sorry, too many clients already' at {slots}."
            ),
        },
    }


def _live_slot_rule(name, share, severity, thresholds, used):
    """A server without planned numbers: the same rule on the server's live settings."""
    selector = f'{{{SERVER_LABEL}="{name}"}}'
    ordinary = (
        f"(max by ({SERVER_LABEL}) (pg_settings_max_connections{selector})"
        f" - max by ({SERVER_LABEL}) (pg_settings_superuser_reserved_connections{selector})"
        f" - (max by ({SERVER_LABEL}) (pg_settings_reserved_connections{selector}) or vector(0)))"
    )
    rule = _slot_rule(name, 1, share, severity, thresholds, used)
    rule["expr"] = f"{used} >= {_number_text(share)} * {ordinary}"
    rule["annotations"]["description"] = (
        f"{{{{ $value }}}} client backends on {name}, at or above {int(round(share * 100))}% of its ordinary slots "
        "(live max_connections - superuser_reserved_connections - reserved_connections)."
    )
    return rule


def monitoring_rules(servers, thresholds=None, poolers=True):
    """Prometheus rules (the file's document) for ``servers``: name -> plan entry or role inputs.

    Each entry may give ``max_connections``, ``superuser_reserved_connections`` (default 3),
    ``reserved_connections`` (default 0) and ``demand`` (the connections the plan counted for it,
    or None when nobody declared a client). A server without max_connections is watched against
    its live settings; one without a demand gets no demand rule. ``poolers`` adds the PgBouncer group.
    """
    if not isinstance(servers, Mapping):
        raise AnsibleFilterError(f"monitoring_rules expects a mapping of server name to its plan, got {servers!r}")
    limits = rules_thresholds(thresholds)
    server_rules = []
    for name in sorted(servers):
        server = servers[name]
        if not isinstance(name, str) or not _NAME.match(name):
            raise AnsibleFilterError(f"monitoring_rules: server name {name!r} is not a host name")
        if not isinstance(server, Mapping):
            raise AnsibleFilterError(f"monitoring_rules: server {name} must be a mapping, got {server!r}")
        used = f'sum by ({SERVER_LABEL}) (pg_stat_activity_count{{{SERVER_LABEL}="{name}"}})'
        slots = _ordinary_slots(name, server)
        for share, severity in ((limits["slots_warning"], "warning"), (limits["slots_critical"], "critical")):
            if slots is None:
                server_rules.append(_live_slot_rule(name, share, severity, limits, used))
            else:
                server_rules.append(_slot_rule(name, slots, share, severity, limits, used))
        demand = server.get("demand")
        if demand is not None:
            demand = _number(demand, f"server {name}: demand", 0, 262143, integer=True)
            server_rules.append({
                "alert": "HeadroomDemandAbovePlan",
                "expr": f"{used} > {demand}",
                "for": _duration(limits["demand_for_minutes"]),
                "labels": {"severity": "warning", SERVER_LABEL: name},
                "annotations": {
                    "summary": f"{name}: more client backends than the fleet plan counted",
                    "description": (
                        f"{{{{ $value }}}} client backends on {name}; the plan sized it for a demand of {demand}. "
                        "A client nobody declared (headroom_direct_clients, pgbouncer_databases) is connecting."
                    ),
                },
            })
    idle = limits["idle_in_transaction_seconds"]
    common = [
        {
            "alert": "HeadroomIdleInTransaction",
            "expr": (
                f"max by ({SERVER_LABEL}, datname) "
                f'(pg_stat_activity_max_tx_duration{{{SERVER_LABEL}!="", state=~"idle in transaction.*"}}) > {_number_text(idle)}'
            ),
            "for": "1m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $labels.%s }}: a transaction idle for more than %s s in {{ $labels.datname }}" % (SERVER_LABEL, _number_text(idle)),
                "description": "Its oldest idle-in-transaction session began its transaction {{ $value }} s ago and holds its slot and locks.",
            },
        },
        {
            "alert": "HeadroomPostgresExporterDown",
            # 0.11 exports no pg_up with --constantLabels; every version has pg_exporter_last_scrape_error.
            "expr": f'pg_up{{{SERVER_LABEL}!=""}} == 0 or pg_exporter_last_scrape_error{{{SERVER_LABEL}!=""}} == 1',
            "for": "2m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "{{ $labels.%s }}: the exporter cannot log in to PostgreSQL" % SERVER_LABEL,
                "description": "pg_up is 0 or the last scrape failed: the slot alerts for this server see nothing.",
            },
        },
    ]
    groups = [{"name": "headroom-postgresql", "rules": server_rules + common}]
    if poolers:
        maxwait = limits["pgbouncer_maxwait_seconds"]
        groups.append({
            "name": "headroom-pgbouncer",
            "rules": [
                {
                    "alert": "HeadroomPgBouncerClientsWaiting",
                    "expr": "sum by (instance, database) (pgbouncer_pools_client_waiting_connections) > 0",
                    "for": _duration(limits["pgbouncer_waiting_minutes"]),
                    "labels": {"severity": "warning"},
                    "annotations": {
                        "summary": "{{ $labels.instance }}: clients waiting for a server connection in {{ $labels.database }}",
                        "description": (
                            "{{ $value }} clients in cl_waiting for %d minutes: the pools are full." % limits["pgbouncer_waiting_minutes"]
                        ),
                    },
                },
                {
                    "alert": "HeadroomPgBouncerMaxWait",
                    "expr": f"max by (instance, database) (pgbouncer_pools_client_maxwait_seconds) > {_number_text(maxwait)}",
                    "for": "1m",
                    "labels": {"severity": "warning"},
                    "annotations": {
                        "summary": "{{ $labels.instance }}: the oldest waiting client in {{ $labels.database }} waited {{ $value }} s",
                        "description": (
                            "maxwait above %s s; at query_wait_timeout PgBouncer gives the client an error." % _number_text(maxwait)
                        ),
                    },
                },
                {
                    "alert": "HeadroomPgBouncerExporterDown",
                    "expr": "pgbouncer_up == 0",
                    "for": "2m",
                    "labels": {"severity": "warning"},
                    "annotations": {
                        "summary": "{{ $labels.instance }}: the exporter cannot log in to PgBouncer's admin console",
                        "description": "pgbouncer_up is 0: the waiting-client alerts for this host see nothing.",
                    },
                },
            ],
        })
    return {"groups": groups}


def monitoring_plan_servers(plan, names, inputs=None):
    """Each server's planned numbers: the plan's entry where it has one, else the role inputs ``inputs[name]``."""
    plan_servers = (plan or {}).get("servers", {}) if isinstance(plan, Mapping) else {}
    inputs = inputs or {}
    out = {}
    for name in names:
        entry = plan_servers.get(name)
        if isinstance(entry, Mapping) and entry.get("max_connections") is not None:
            out[name] = {
                "max_connections": entry["max_connections"],
                "superuser_reserved_connections": entry.get("superuser_reserved_connections", DEFAULT_SUPERUSER_RESERVED),
                "reserved_connections": entry.get("reserved_connections", 0),
                "demand": entry.get("demand") if entry.get("contributors") else None,
            }
        else:
            given = inputs.get(name) or {}
            out[name] = {key: value for key, value in given.items() if value not in (None, "")}
    return out


def monitoring_refusals(inputs):
    """What the monitoring role refuses before anything changes; one message per broken rule."""
    refusals = []
    for exporter, port_default in (("postgres_exporter", 9187), ("pgbouncer_exporter", 9127)):
        if not inputs.get(exporter):
            continue
        prefix = f"monitoring_{exporter}"
        address = str(inputs.get(f"{exporter}_listen_address", ""))
        port = inputs.get(f"{exporter}_port", port_default)
        user = str(inputs.get(f"{exporter}_user", ""))
        if not _ADDRESS.match(address):
            refusals.append(f"{prefix}_listen_address {address!r} is not an address or host name (one, no port).")
        try:
            port_ok = 1 <= int(port) <= 65535
        except (TypeError, ValueError):
            port_ok = False
        if not port_ok:
            refusals.append(f"{prefix}_port {port!r} must be a TCP port, 1 to 65535.")
        if not _ROLE_NAME.match(user):
            refusals.append(f"{prefix}_user {user!r} must be a role name: a letter or _, then letters, digits or _.")
        if not inputs.get(f"{exporter}_password"):
            refusals.append(f"{prefix}_password is empty: the exporter logs in with SCRAM and needs the role's password.")
        cert = inputs.get(f"{exporter}_tls_cert_file") or ""
        key = inputs.get(f"{exporter}_tls_key_file") or ""
        if bool(cert) != bool(key):
            refusals.append(f"{prefix}_tls_cert_file and _tls_key_file go together; got {cert!r} and {key!r}.")
        if address and not _LOOPBACK.match(address) and not (cert and key):
            refusals.append(
                f"{prefix}_listen_address {address!r} is beyond loopback: set {prefix}_tls_cert_file and "
                f"{prefix}_tls_key_file (the exporter serves its metrics over TLS then), or listen on 127.0.0.1."
            )
    release = str(inputs.get("debian_release", ""))
    if inputs.get("pgbouncer_exporter") and release == "12":
        refusals.append(
            "monitoring_pgbouncer_exporter is true on Debian 12, whose prometheus-pgbouncer-exporter 1.7 stops at "
            "start against its own PgBouncer 1.18 (KeyError: 'total_requests': SHOW STATS renamed that column in 1.8). "
            "Set monitoring_pgbouncer_exporter: false for this host, or run PgBouncer on Debian 13 or later."
        )
    stats_users = inputs.get("pgbouncer_stats_users") or []
    if inputs.get("pgbouncer_exporter") and inputs.get("pgbouncer_exporter_user") not in stats_users:
        refusals.append(
            f"monitoring_pgbouncer_exporter_user {inputs.get('pgbouncer_exporter_user')!r} is not in pgbouncer_stats_users "
            f"{list(stats_users)!r}: add it there (the pgbouncer role copies its SCRAM verifier into userlist.txt)."
        )
    try:
        rules_thresholds(inputs.get("thresholds"))
    except AnsibleFilterError as err:
        refusals.append(f"{err.message}.")
    return refusals


def scram_matches(verifier, password):
    """Whether ``password`` is the one a PostgreSQL ``SCRAM-SHA-256$<iter>:<salt>$<stored>:<server>`` verifier holds.

    RFC 5802: SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations); StoredKey =
    SHA-256(HMAC(SaltedPassword, "Client Key")). The password is used as UTF-8 without SASLprep,
    which is what PostgreSQL stores for ASCII passwords.
    """
    match = re.match(SCRAM_VERIFIER, verifier or "")
    if not match:
        return False
    iterations, salt, stored_key = int(match.group(1)), b64decode(match.group(2)), b64decode(match.group(3))
    salted = hashlib.pbkdf2_hmac("sha256", str(password).encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+[0-9]+)?\s*$')
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def prometheus_scrape_series(text, labels=None, names=None):
    """A scrape (Prometheus text format) as promtool ``input_series``: one ``{series, value}`` per sample.

    ``labels`` (e.g. ``{job: ..., instance: ...}``) are added to every series, as Prometheus adds
    them when it scrapes; ``names`` keeps only the metrics named there (all when empty).
    """
    out = []
    for line in str(text).splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        sample = _SAMPLE.match(line)
        if not sample:
            raise AnsibleFilterError(f"not a sample line of the Prometheus text format: {line!r}")
        name, body, value = sample.group(1), sample.group(3) or "", sample.group(4)
        if names and name not in names:
            continue
        pairs = dict(_LABEL.findall(body))
        pairs.update(labels or {})
        label_text = ", ".join(f'{key}="{pairs[key]}"' for key in sorted(pairs))
        out.append({"series": f"{name}{{{label_text}}}" if label_text else name, "value": float(value)})
    return out


class FilterModule:
    """Monitoring filters."""

    def filters(self):
        return {
            "monitoring_rules": monitoring_rules,
            "monitoring_plan_servers": monitoring_plan_servers,
            "monitoring_refusals": monitoring_refusals,
            "scram_matches": scram_matches,
            "prometheus_scrape_series": prometheus_scrape_series,
        }
