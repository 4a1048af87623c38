"""headroom.pg.helper and headroom.pg.role_defaults: the shared pieces, from one place;
headroom.pg.rendered_files: templates rendered on the controller."""

import hashlib

import pytest
import yaml
from ansible.errors import AnsibleLookupError
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.headroom.pg.plugins.lookup.helper import LookupModule as Helper
from ansible_collections.headroom.pg.plugins.lookup.rendered_files import LookupModule as RenderedFiles
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


def test_rendered_files_give_each_template_the_sha1_of_its_rendering(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "app.ini.j2").write_text("port = {{ port }}\nname = {{ name }}\n")
    loader = DataLoader()
    lookup = RenderedFiles(loader=loader, templar=Templar(loader=loader))
    variables = {"ansible_search_path": [str(tmp_path)], "name": "pgb1", "ansible_managed": "managed"}
    directory = {"kind": "directory", "path": "/etc/app", "owner": "root", "group": "root", "mode": "0755"}
    entries = [directory,
               {"kind": "ini", "path": "/etc/app/a.ini", "template": "app.ini.j2", "vars": {"port": 6432}},
               {"kind": "ini", "path": "/etc/app/b.ini", "template": "app.ini.j2", "vars": {"port": 6433}},
               {"kind": "last_good", "path": "/etc/app/a.ini.last-good", "template": "app.ini.j2", "vars": {"port": 6432}}]
    out = lookup.run([entries], variables)
    assert out[0] == directory
    assert out[1]["checksum"] == hashlib.sha1(b"port = 6432\nname = pgb1\n").hexdigest() == out[3]["checksum"]
    assert out[2]["checksum"] == hashlib.sha1(b"port = 6433\nname = pgb1\n").hexdigest()
    assert "content" not in out[1] and out[1]["vars"] == {"port": 6432}


def test_rendered_files_refuse_what_is_not_an_entry():
    loader = DataLoader()
    with pytest.raises(AnsibleLookupError, match="each entry must be a mapping"):
        RenderedFiles(loader=loader, templar=Templar(loader=loader)).run([["/etc/app/a.ini"]], {})
