"""headroom.pg.helper and headroom.pg.role_defaults: the shared pieces, from one place."""

import pytest
import yaml
from ansible.errors import AnsibleLookupError
from ansible_collections.headroom.pg.plugins.lookup.helper import LookupModule as Helper
from ansible_collections.headroom.pg.plugins.lookup.role_defaults import LookupModule as RoleDefaults
from ansible_collections.headroom.pg.plugins.plugin_utils.layout import ROLES_DIR


def test_helper_gives_the_directory_or_each_helpers_path():
    assert Helper().run([]) == ["/usr/local/lib/headroom"]
    assert Helper().run(["pgbouncer-pause", "pgbouncer-console"]) == [
        "/usr/local/lib/headroom/pgbouncer-pause", "/usr/local/lib/headroom/pgbouncer-console"]


def test_helper_refuses_a_name_it_does_not_know():
    with pytest.raises(AnsibleLookupError, match="no helper pgbouncer-nope; known are pgbouncer-console"):
        Helper().run(["pgbouncer-nope"])


def test_the_pgbouncer_role_installs_every_helper_the_lookup_names():
    files = {path.name for path in (ROLES_DIR / "pgbouncer" / "files").iterdir()}
    assert {"pgbouncer-console", "pgbouncer-pause"} <= files


def test_role_defaults_merge_the_roles_files_later_roles_winning():
    merged = RoleDefaults().run(["postgresql", "postgresql_tuning", "pgbouncer"])[0]
    for role in ("postgresql", "postgresql_tuning", "pgbouncer"):
        for name, value in yaml.safe_load((ROLES_DIR / role / "defaults" / "main.yml").read_text()).items():
            assert merged[name] == value


def test_role_defaults_refuse_a_role_the_collection_does_not_have():
    with pytest.raises(AnsibleLookupError, match="this collection has no role 'nope'"):
        RoleDefaults().run(["nope"])
