"""meta/execution-environment.yml: `ansible-builder create` turns it into a build context with our entries.

`create` only writes the context (Containerfile, _build/); it builds nothing and needs no
container runtime and no network, so this runs with the unit tests.
"""

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
META = REPO / "meta"
DEFINITION = META / "execution-environment.yml"


def entries(path):
    """The requirement lines of a pip or bindep file, comments and blank lines left out."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def pins(path):
    """name -> pinned version of a requirements file with name==version lines."""
    return {name.lower(): version for name, version in (line.split("==", 1) for line in entries(path) if "==" in line)}


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    out = tmp_path_factory.mktemp("ee") / "context"
    result = subprocess.run(
        [sys.executable, "-m", "ansible_builder", "create", "--file", str(DEFINITION), "--context", str(out),
         "--output-filename", "Containerfile"],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def build_args(containerfile):
    return dict(re.findall(r'^ARG (\w+)="(.*)"$', containerfile, re.M))


def test_the_definition_is_schema_3_with_a_placeholder_base_image():
    definition = yaml.safe_load(DEFINITION.read_text())
    assert definition["version"] == 3
    assert "example.invalid" in definition["images"]["base_image"]["name"]
    assert definition["dependencies"]["python"] == "ee-requirements.txt"
    assert definition["dependencies"]["system"] == "ee-bindep.txt"


def test_create_writes_a_containerfile_from_the_placeholder_base_image(context):
    containerfile = (context / "Containerfile").read_text()
    args = build_args(containerfile)
    assert args["EE_BASE_IMAGE"] == yaml.safe_load(DEFINITION.read_text())["images"]["base_image"]["name"]
    assert "FROM $EE_BASE_IMAGE AS base" in containerfile
    assert args["PYCMD"] == "/usr/bin/python3.11"


def test_ansible_core_in_the_ee_is_the_one_the_checkout_pins(context):
    refs = build_args((context / "Containerfile").read_text())["ANSIBLE_INSTALL_REFS"].split()
    assert f"ansible-core=={pins(REPO / 'requirements.txt')['ansible-core']}" in refs
    assert any(ref.startswith("ansible-runner==") for ref in refs)


def test_the_context_carries_our_python_requirements(context):
    ours = entries(META / "ee-requirements.txt")
    assert ours, "meta/ee-requirements.txt lists nothing"
    assert set(ours) <= set(entries(context / "_build/requirements.txt"))
    assert "matplotlib" in pins(META / "ee-requirements.txt")  # capacity.yml's chart, drawn on the controller


def test_the_ee_python_pins_match_the_checkout(context):
    checkout = pins(REPO / "requirements.txt")
    for name, version in pins(META / "ee-requirements.txt").items():
        assert checkout.get(name) == version, name


def test_the_context_carries_our_system_requirements(context):
    ours = entries(META / "ee-bindep.txt")
    assert "openssh-clients [platform:rpm]" in ours
    assert set(ours) <= set(entries(context / "_build/bindep.txt"))


def test_the_ee_files_stay_out_of_the_collection_tarball(tmp_path):
    """In an installed collection ansible-builder reads meta/execution-environment.yml (or else
    requirements.txt) as the collection's own EE requirements, with paths relative to the
    collection root: neither file describes that, so galaxy.yml leaves both out."""
    ansible_galaxy = Path(sys.executable).parent / "ansible-galaxy"
    result = subprocess.run(
        [str(ansible_galaxy), "collection", "build", "--output-path", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (tarball,) = tmp_path.glob("headroom-pg-*.tar.gz")
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    assert "meta/runtime.yml" in names
    assert not names & {"requirements.txt", "meta/execution-environment.yml", "meta/ee-requirements.txt",
                        "meta/ee-bindep.txt"}
