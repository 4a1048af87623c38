import hashlib

import pytest
from ansible_collections.headroom.pg.plugins.filter.host_files import paths_to_write

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
