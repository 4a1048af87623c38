import hashlib

import pytest
from ansible_collections.headroom.pg.plugins.filter.host_files import file_differs, paths_to_write

HELPER = "#!/bin/sh\necho ok\n"
DIRECTORY = {"path": "/etc/pgbouncer", "owner": "root", "group": "postgres", "mode": "0750"}
FILE = {"path": "/usr/local/lib/headroom/x", "owner": "root", "group": "root", "mode": "0755", "content": HELPER}


def state(**changes):
    found = {"exists": True, "isdir": False, "mode": "0755", "owner": "root", "group": "root",
             "checksum": hashlib.sha1(HELPER.encode()).hexdigest()}
    return dict(found, **changes)


def test_entries_as_wanted_are_left_alone():
    states = {DIRECTORY["path"]: state(isdir=True, mode="0750", group="postgres", checksum=None), FILE["path"]: state()}
    assert paths_to_write([DIRECTORY, FILE], states) == []


@pytest.mark.parametrize("changes", [{"exists": False}, {"mode": "0644"}, {"owner": "postgres"}, {"group": "staff"},
                                     {"checksum": "0" * 40}, {"isdir": True}])
def test_a_file_missing_or_different_in_any_attribute_or_content_is_written(changes):
    assert paths_to_write([FILE], {FILE["path"]: state(**changes)}) == [FILE]


def test_a_directory_that_is_a_file_or_missing_is_made():
    assert paths_to_write([DIRECTORY], {DIRECTORY["path"]: state(mode="0750", group="postgres")}) == [DIRECTORY]
    assert paths_to_write([DIRECTORY], {}) == [DIRECTORY]


def test_an_entry_without_its_attributes_is_refused_by_name():
    with pytest.raises(Exception, match="lacks owner"):
        paths_to_write([{"path": "/x", "group": "root", "mode": "0755"}], {})


def test_a_rendered_file_as_the_read_found_it_does_not_differ():
    assert not file_differs(state(), HELPER, "root", "root", "0755")


@pytest.mark.parametrize("changes", [{"exists": False}, {"mode": "0640"}, {"owner": "postgres"}, {"isdir": True}])
def test_a_rendered_file_differs_in_any_attribute_from_the_read(changes):
    assert file_differs(state(**changes), HELPER, "root", "root", "0755")


def test_a_rendered_file_differs_in_content_or_when_the_read_has_no_state():
    assert file_differs(state(), HELPER + "more\n", "root", "root", "0755")
    assert file_differs(None, HELPER, "root", "root", "0755")
    with pytest.raises(Exception, match="file_differs: the state must be"):
        file_differs("/x", HELPER, "root", "root", "0755")


def test_a_file_given_by_the_sha1_of_its_rendering_compares_as_its_content_would():
    rendered = {key: value for key, value in FILE.items() if key != "content"}
    rendered["checksum"] = hashlib.sha1(HELPER.encode()).hexdigest()
    assert paths_to_write([rendered], {FILE["path"]: state()}) == []
    assert paths_to_write([rendered], {FILE["path"]: state(checksum="0" * 40)}) == [rendered]
    assert paths_to_write([rendered], {}) == [rendered]
