"""Check mode with --diff shows exactly the change and touches nothing."""

import json


def test_the_diff_shows_the_new_values(host):
    diff = json.loads(host.file("/var/lib/headroom-test/check-diff.json").content_string)
    diff = diff[0] if isinstance(diff, list) else diff
    assert "random_page_cost = 2.5" in diff["after"]
    assert "shared_buffers = 192MB" in diff["after"]
    assert "random_page_cost = 1.1" in diff["before"]


def test_the_file_is_untouched(host):
    before = host.file("/var/lib/headroom-test/checksum-before").content_string
    assert host.run("find /etc/postgresql -type f -name '*.conf' | sort | xargs sha256sum").stdout == before


def test_the_server_still_runs_the_old_values_and_was_not_restarted(host, pg):
    assert pg.show("random_page_cost") == "1.1"
    assert pg.start_time() == host.file("/var/lib/headroom-test/start-before").content_string.strip()
