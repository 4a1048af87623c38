"""A setting that needs a restart waits for one until restarts are allowed, then goes live."""

import json


def test_the_run_without_restarts_did_not_restart_the_server(host):
    before = host.file("/var/lib/headroom-test/start-before").content_string
    after = host.file("/var/lib/headroom-test/start-after-converge").content_string
    assert before == after


def test_the_run_without_restarts_reported_shared_buffers_as_pending(host):
    report = json.loads(host.file("/var/lib/headroom-test/after-converge.json").content_string)
    pending = {s["name"]: s for s in report["pending"]}
    assert "shared_buffers" in pending
    assert {s["context"] for s in report["pending"]} == {"postmaster"}
    assert pending["shared_buffers"]["configured"] == "192MB"
    assert pending["shared_buffers"]["pending_restart"] is True


def test_with_restarts_allowed_the_value_is_live_after_a_restart(host, pg):
    assert pg.show("shared_buffers") == "192MB"
    assert pg.start_time() != host.file("/var/lib/headroom-test/start-before").content_string.strip()
    assert pg.sql("SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
