"""The postgresql role leaves a running, enabled cluster that answers over its socket."""


def test_unit_is_active_and_enabled(host, pg):
    unit = host.service(pg.unit)
    assert unit.is_running
    assert unit.is_enabled


def test_cluster_answers_select_1_over_its_socket(pg):
    assert pg.sql("SELECT 1") == "1"


def test_version_is_the_distributions_default(host, pg):
    codename = host.check_output(". /etc/os-release && echo $VERSION_CODENAME")
    assert pg.version == {"bookworm": 15, "trixie": 17, "forky": 18}[codename]
