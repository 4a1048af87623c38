"""The postgresql role leaves a running, enabled cluster that answers over its socket."""

import json


def cluster(host):
    """The distribution's default cluster, as pg_lsclusters reports it."""
    clusters = json.loads(host.check_output("pg_lsclusters --json"))
    assert len(clusters) == 1, clusters
    return clusters[0]


def test_unit_is_active_and_enabled(host):
    c = cluster(host)
    unit = host.service(f"postgresql@{c['version']}-{c['cluster']}")
    assert unit.is_running
    assert unit.is_enabled


def test_cluster_answers_select_1_over_its_socket(host):
    c = cluster(host)
    out = host.check_output(
        "runuser -u postgres -- psql -XAtq --host=%s --port=%s --command='SELECT 1'",
        c["socketdir"],
        c["port"],
    )
    assert out == "1"


def test_version_is_the_distributions_default(host):
    expected = {"12": "15", "13": "17"}[host.file("/etc/debian_version").content_string.split(".")[0]]
    assert cluster(host)["version"] == expected
