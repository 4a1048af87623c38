"""The files and directories a role installs that a read of the host found missing or different.

A file, copy or template task that finds nothing to change still costs two round trips to the
host (a stat, then the file module for owner and mode). A role that has read the host already
(module pgbouncer_info, option paths; postgresql_info's managed_file) loops its task over only
the entries paths_to_write returns, or skips a template whose rendering file_differs finds on
the host already. A template's entry may carry the SHA-1 of its rendering as ``checksum``
(lookup headroom.pg.rendered_files) instead of the content itself.
"""

import hashlib
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

ATTRIBUTES = ("owner", "group", "mode")


def paths_to_write(wanted, states):
    """The entries of ``wanted`` that ``states`` (a read's paths: exists, isdir, mode, owner, group,
    checksum) does not show as wanted. Each entry has path, owner, group and mode; one with
    ``content`` or ``checksum`` (the SHA-1 of its content) is a file, compared by that SHA-1, and
    the others are directories."""
    if not isinstance(states, Mapping):
        raise AnsibleFilterError(f"paths_to_write: states must be a read's paths (a mapping), got {states!r}")
    changes = []
    for entry in wanted:
        missing = [key for key in ("path",) + ATTRIBUTES if key not in entry]
        if missing:
            raise AnsibleFilterError(f"paths_to_write: entry {entry!r} lacks {', '.join(missing)}")
        if _differs(states.get(entry["path"]) or {}, entry):
            changes.append(entry)
    return changes


def file_differs(state, content, owner, group, mode):
    """Whether a file with this content, owner, group and mode differs from ``state``, a read's
    state of its path (exists, isdir, mode, owner, group, checksum); a missing state differs."""
    if state is not None and not isinstance(state, Mapping):
        raise AnsibleFilterError(f"file_differs: the state must be a read's state of a path (a mapping), got {state!r}")
    return _differs(state or {}, {"content": content, "owner": owner, "group": group, "mode": mode})


def sha1_of(content):
    """The SHA-1 a read reports for a file holding ``content`` (UTF-8)."""
    return hashlib.sha1(str(content).encode("utf-8")).hexdigest()


def _differs(state, entry):
    same = bool(state.get("exists")) and all(str(state.get(key)) == str(entry[key]) for key in ATTRIBUTES)
    if "checksum" in entry or "content" in entry:
        checksum = entry["checksum"] if "checksum" in entry else sha1_of(entry["content"])
        return not (same and not state.get("isdir") and state.get("checksum") == checksum)
    return not (same and bool(state.get("isdir")))


class FilterModule:
    """Files a read found missing or different."""

    def filters(self):
        return {"paths_to_write": paths_to_write, "file_differs": file_differs}
