"""capacity.yml on the lab: a leaking application shows over its declaration, flagged, with the dry run that frees it.

Needs the lab up and converged with inventories/lab (`make lab`), which declares the direct
client ``leaky`` with 2 connections on headroom-lab-db1. The test opens 5 sessions there as
application ``leaky`` (3 idle, 2 idle in transaction), runs playbooks/capacity.yml, checks the
declared-vs-observed report and the flags, runs the printed terminate-idle.yml dry run and
checks that it selects exactly the leaked sessions; the sessions end with the test.

    pytest -q tests/lab/test_capacity_leak.py      # from the checkout, virtualenv active
"""

import json
import shlex
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DB1 = "headroom-lab-db1"
APP = "leaky"
DECLARED = 2  # inventories/lab/group_vars/all.yml
PSQL = ["psql", "-XAtq", "-h", "127.0.0.1", "-p", "5432", "-U", APP, "-d", "postgres", "-v", "ON_ERROR_STOP=1"]


def docker(*argv, **kwargs):
    return subprocess.run(["docker", "exec", *argv], check=True, capture_output=True, text=True, **kwargs).stdout


def backends():
    out = docker(DB1, "su", "postgres", "-c", "psql -XAtq -p 5432 -c \"SELECT coalesce(json_agg(json_build_object("
                 "'pid', pid, 'state', state)), '[]') FROM pg_stat_activity WHERE application_name = 'leaky'\"")
    return json.loads(out)


@pytest.fixture
def leak():
    """Five sessions of application leaky, held open by their psql's stdin; ended when the test ends."""
    if subprocess.run(["docker", "inspect", DB1], capture_output=True, check=False).returncode != 0:
        pytest.skip(f"the lab is not up ({DB1}); run make lab")
    docker(DB1, "su", "postgres", "-c", "psql -XAtq -p 5432 -c \"DO \\$\\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles "
           "WHERE rolname = 'leaky') THEN CREATE ROLE leaky LOGIN PASSWORD 'leaky'; END IF; END\\$\\$\"")
    sessions = []
    for statement in ["SELECT 1;"] * 3 + ["BEGIN; SELECT 1;"] * 2:
        process = subprocess.Popen(
            ["docker", "exec", "-i", "-e", "PGPASSWORD=leaky", "-e", f"PGAPPNAME={APP}", DB1, *PSQL],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        process.stdin.write(statement + "\n")
        process.stdin.flush()
        sessions.append(process)
    deadline = time.monotonic() + 30
    while len([b for b in backends() if b["state"] != "active"]) < 5:
        assert time.monotonic() < deadline, backends()
        time.sleep(0.5)
    time.sleep(2)  # so the idle-in-transaction ones are past the 1 s threshold the test gives
    yield backends()
    for process in sessions:
        process.stdin.close()
        process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while backends():
        assert time.monotonic() < deadline, f"leaked sessions left on {DB1}: {backends()}"
        time.sleep(0.5)


def playbook(*argv):
    return subprocess.run(["ansible-playbook", *argv], cwd=ROOT, capture_output=True, text=True, check=False)


def test_a_leaking_application_is_over_its_declaration_and_flagged_with_the_dry_run(leak, tmp_path):
    thresholds = {"idle_in_transaction_seconds": 1}
    result = playbook("playbooks/capacity.yml", "-e", f"connection_budget_report_dir={tmp_path}",
                      "-e", json.dumps({"connection_budget_capacity_thresholds": thresholds}))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "capacity.json").read_text())
    leaky = next(a for a in report["applications"]
                 if a["host"] == DB1 and a["application_name"] == APP and a["held"])
    assert (leaky["kind"], leaky["declared"], leaky["held"], leaky["over"]) == ("direct", DECLARED, 5, 3)
    assert (leaky["idle"], leaky["idle_in_transaction"]) == (3, 2)
    assert leaky["level"] == "warning"
    flags = [f for f in report["flags"] if f["application"] and f"|{APP}|" in f["application"]]
    over = next(f for f in flags if "over its declared" in f["message"])
    stuck = next(f for f in flags if "idle in transaction" in f["message"])
    assert stuck["level"] == "warning" and stuck["command"]
    printed = [line.strip() for line in result.stdout.splitlines()]
    for flag in (over, stuck):
        assert f"WARNING: {flag['message']}" in printed
        assert f"free them (dry run): {flag['command']}" in printed
    assert f"| {leaky['where']} | {APP} | direct |" in (tmp_path / "capacity.md").read_text()

    # The printed dry runs select exactly the leaked sessions, and end none of them.
    idle = {b["pid"] for b in leak if b["state"] == "idle"}
    in_transaction = {b["pid"] for b in leak if b["state"] == "idle in transaction"}
    for flag, expected in ((over, idle), (stuck, in_transaction)):
        argv = shlex.split(flag["command"])
        assert argv[:2] == ["ansible-playbook", "playbooks/terminate-idle.yml"]
        dry = playbook(*argv[1:], "-e", "headroom_terminate_confirm=false")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "DRY RUN" in dry.stdout
        assert f"PIDs {json.dumps(sorted(expected))}" in dry.stdout.replace("\\\"", "\""), dry.stdout
    assert {b["pid"] for b in backends()} == idle | in_transaction
