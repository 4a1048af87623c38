"""Every role's defaults and its meta/argument_specs.yml describe the same variables."""

from pathlib import Path

import pytest
import yaml

ROLES = sorted(p.parent.parent for p in Path(__file__).resolve().parents[3].glob("roles/*/meta/argument_specs.yml"))


def load(path):
    return yaml.safe_load(path.read_text()) or {}


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_is_declared_and_every_declared_option_has_a_default(role):
    defaults = load(role / "defaults/main.yml")
    options = load(role / "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_declared_defaults_match_the_defaults_file(role):
    defaults = load(role / "defaults/main.yml")
    options = load(role / "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, spec in options.items():
        if "{{" in str(defaults.get(name)):
            continue  # a default computed from other variables; the spec can only describe it
        assert spec.get("default") == defaults.get(name), name


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_public_variables_carry_the_role_prefix(role):
    for name in load(role / "defaults/main.yml"):
        assert name.startswith(f"{role.name}_"), name


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_option_has_a_description_and_a_type(role):
    for entry_point in load(role / "meta/argument_specs.yml")["argument_specs"].values():
        for name, spec in entry_point.get("options", {}).items():
            assert spec.get("description"), name
            assert spec.get("type"), name


@pytest.mark.parametrize("role", ROLES, ids=lambda p: p.name)
def test_every_default_has_a_comment_above_it(role):
    lines = (role / "defaults/main.yml").read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith((" ", "#", "-")) and line != "---":
            assert lines[number - 1].startswith("#"), f"{role.name}: no comment above {line!r}"
