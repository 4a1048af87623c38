"""Runs of the project's playbooks against this scenario's containers."""

import json
import os
import subprocess
from pathlib import Path

SCENARIO = Path(__file__).resolve().parents[1]
PROJECT = SCENARIO.parents[1]


def ansible_playbook(playbook, limit=None, extra_vars=None):
    """ansible-playbook with molecule's inventory and config, as converge runs; output on one line."""
    ephemeral = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
    command = ["ansible-playbook", "-i", str(ephemeral / "inventory"), str(playbook)]
    if limit:
        command += ["--limit", limit]
    if extra_vars is not None:
        command += ["--extra-vars", json.dumps(extra_vars)]
    env = dict(os.environ, ANSIBLE_CONFIG=str(ephemeral / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_CALLBACK_RESULT_FORMAT="yaml", ANSIBLE_PIPELINING="1")
    result = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=900, check=False)
    result.output = " ".join((result.stdout + result.stderr).split())  # the yaml callback folds long lines
    return result
