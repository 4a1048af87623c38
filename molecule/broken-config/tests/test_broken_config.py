"""Settings PostgreSQL rejects never go live: the run fails with the reason, the old file stays."""

import json

import pytest

CASES = {
    # case: (words the failure message must contain)
    "not_a_size": ("work_mem", "lots"),
    "unknown_parameter": ("headroom_no_such_parameter",),
    "invalid_enum_value": ("huge_pages", "maybe"),
    "out_of_range": ("default_statistics_target", "100000"),
}


@pytest.fixture
def outcomes(host):
    return json.loads(host.file("/var/lib/headroom-test/outcomes.json").content_string)


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_bad_override_fails_the_run_naming_the_setting_and_value(outcomes, case):
    outcome = outcomes[case]
    assert outcome["failed"], outcome
    for word in CASES[case]:
        assert word in outcome["msg"], outcome["msg"]


def test_the_previous_managed_file_is_in_place(host):
    before = host.file("/var/lib/headroom-test/checksum-before").content_string
    assert host.run("sha256sum /etc/postgresql/*/main/conf.d/50-headroom.conf").stdout == before


def test_the_server_never_stopped_and_still_answers(host, pg):
    assert pg.start_time() == host.file("/var/lib/headroom-test/start-before").content_string.strip()
    assert pg.sql("SELECT 1") == "1"


def test_the_server_reads_its_files_without_errors(pg):
    assert pg.sql("SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"
