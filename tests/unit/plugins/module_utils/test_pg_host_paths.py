import hashlib
import os

from ansible_collections.headroom.pg.plugins.module_utils.pg_host import path_states


def test_path_states_say_what_file_and_copy_compare(tmp_path):
    helper = tmp_path / "helper"
    helper.write_text("#!/bin/sh\n")
    os.chmod(helper, 0o750)
    missing = tmp_path / "missing"
    states = path_states([str(helper), str(tmp_path), str(missing)])
    assert states[str(helper)]["checksum"] == hashlib.sha1(b"#!/bin/sh\n").hexdigest()
    assert (states[str(helper)]["mode"], states[str(helper)]["isdir"]) == ("0750", False)
    assert states[str(helper)]["owner"] and states[str(helper)]["group"]
    assert (states[str(tmp_path)]["isdir"], states[str(tmp_path)]["checksum"]) == (True, None)
    assert states[str(missing)] == {"exists": False, "isdir": False, "mode": None, "owner": None, "group": None,
                                    "checksum": None}
