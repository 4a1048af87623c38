"""The postgresql role leaves a running, enabled cluster that answers over its socket."""


def test_unit_is_active_and_enabled(host, pg):
    unit = host.service(pg.unit)
    assert unit.is_running
    assert unit.is_enabled


def test_cluster_answers_select_1_over_its_socket(pg):
    assert pg.sql("SELECT 1") == "1"


def test_version_is_the_distributions_default(host, pg):
    debian = host.file("/etc/debian_version").content_string.split(".")[0]
    assert pg.version == {"12": 15, "13": 17}[debian]
