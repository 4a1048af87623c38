"""The files and directories a role installs that a read of the host found missing or different.

A file, copy or template task that finds nothing to change still costs two round trips to the
host (a stat, then the file module for owner and mode). A role that has read the host already
(module pgbouncer_info, option paths) loops its task over only the entries this filter returns.
"""

import hashlib
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

ATTRIBUTES = ("owner", "group", "mode")


def paths_to_write(wanted, states):
    """The entries of ``wanted`` that ``states`` (a read's paths: exists, isdir, mode, owner, group,
    checksum) does not show as wanted. Each entry has path, owner, group and mode; one with
    ``content`` is a file, compared by the SHA-1 of that content, and the others are directories."""
    if not isinstance(states, Mapping):
        raise AnsibleFilterError(f"paths_to_write: states must be a read's paths (a mapping), got {states!r}")
    changes = []
    for entry in wanted:
        missing = [key for key in ("path",) + ATTRIBUTES if key not in entry]
        if missing:
            raise AnsibleFilterError(f"paths_to_write: entry {entry!r} lacks {', '.join(missing)}")
        state = states.get(entry["path"]) or {}
        same = bool(state.get("exists")) and all(str(state.get(key)) == str(entry[key]) for key in ATTRIBUTES)
        if "content" in entry:
            same = same and not state.get("isdir") and state.get("checksum") == hashlib.sha1(
                str(entry["content"]).encode("utf-8")).hexdigest()
        else:
            same = same and bool(state.get("isdir"))
        if not same:
            changes.append(entry)
    return changes


class FilterModule:
    """Files a read found missing or different."""

    def filters(self):
        return {"paths_to_write": paths_to_write}
