"""Write values into postgresql.conf safely, and compare them with what the server runs.

Three jobs the tuning role needs beside the sizing engine:

* ``pg_conf_value``: render one value for ``name = value`` so that no input can
  end the line or start another parameter (PostgreSQL's quoting: single quotes,
  a quote or a backslash doubled, as ALTER SYSTEM writes postgresql.auto.conf with
  src/port/quotes.c; the file's lexer reads a backslash as an escape).
* ``pg_library_files``: the files the ``*_preload_libraries`` settings make the server
  load, so the role can refuse a library that is not installed before it writes.
* ``pg_settings_diff``: which configured values differ from the running ones in
  ``pg_settings``, comparing as PostgreSQL does: ``'4GB'`` equals ``'4096MB'``
  equals 524288 blocks of 8kB, ``'10min'`` equals 600000 ms, ``on`` equals
  ``true``.
"""

import math
import re

from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.plugin_utils.pg_units import parse_size, unit_bytes

#: Time units of PostgreSQL settings, in microseconds (guc.c's time unit table).
TIME_UNIT_US = {"d": 86_400_000_000, "h": 3_600_000_000, "min": 60_000_000, "s": 1_000_000, "ms": 1_000, "us": 1}

_BARE_VALUE_RE = re.compile(r"^-?(?:\d+(?:\.\d+)?)$")
# Written without quotes: plain numbers, whole numbers with a unit ("128MB", "10min"), simple words ("on", "try").
_UNQUOTED_RE = re.compile(r"(?:-?\d+(?:\.\d+)?|\d+[A-Za-z]+|[A-Za-z_][A-Za-z0-9_]*)", re.ASCII)
_TIME_RE = re.compile(r"^\s*(?P<number>-?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<unit>[a-z]*)\s*$")
_BOOL_WORDS = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def pg_conf_value(value, name="value"):
    """Render ``value`` for a postgresql.conf line: numbers bare, booleans on/off, the rest quoted."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AnsibleFilterError(f"{name}: {value!r} is not a finite number")
        value = repr(value)  # "1e-05" has no ".": the file's lexer needs it quoted
    if not isinstance(value, str):
        raise AnsibleFilterError(f"{name}: {value!r} is a {type(value).__name__}; expected a string, number or boolean")
    if _CONTROL_RE.search(value):
        raise AnsibleFilterError(
            f"{name}: {value!r} holds a newline or another control character, which could add a line to "
            "postgresql.conf; use printable characters only"
        )
    if _UNQUOTED_RE.fullmatch(value):
        return value
    # The file's lexer reads a backslash as an escape: doubled, a trailing one cannot eat the closing quote.
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _time_us(value, unit):
    match = _TIME_RE.match(str(value))
    if not match or (match.group("unit") and match.group("unit") not in TIME_UNIT_US):
        raise ValueError(value)
    number = float(match.group("number"))
    if number < 0:  # -1 and friends mean "disabled": compare as they are
        return number
    return round(number * TIME_UNIT_US[match.group("unit") or unit])


def _normalize(value, row):
    """``value`` as a comparable Python value, in the terms of the pg_settings ``row``."""
    vartype, unit = row.get("vartype"), row.get("unit") or ""
    text = value if isinstance(value, str) else pg_conf_value(value, row["name"]).strip("'")
    if vartype == "bool":
        return _BOOL_WORDS.get(text.strip().lower(), text)
    if vartype in ("integer", "real") and unit:
        if unit in TIME_UNIT_US:
            return _time_us(text, unit)
        number = float(text) if _BARE_VALUE_RE.match(text.strip()) else None
        if number is not None and number < 0:  # -1 means "use the default": no unit arithmetic
            return number
        return parse_size(text, unit, what=row["name"]) // unit_bytes(unit)
    if vartype in ("integer", "real"):
        return float(text)
    if vartype == "enum":
        return text.strip().lower()
    return text


def pg_settings_diff(configured, running_rows):
    """The configured settings whose value the server does not run.

    ``configured`` maps parameter names to values as written in the files;
    ``running_rows`` is ``pg_settings`` as a list of mappings with at least name,
    setting, unit, vartype, context and pending_restart. Returns a list (sorted by
    name) of mappings: name, configured, running (with its unit), context,
    pending_restart. A name the server does not know raises AnsibleFilterError.
    """
    rows = {row["name"]: row for row in running_rows}
    differences = []
    for name in sorted(configured):
        row = rows.get(name)
        if row is None:
            raise AnsibleFilterError(f"parameter {name!r} is not known to this server (not in pg_settings)")
        try:
            equal = _normalize(configured[name], row) == _normalize(row["setting"], row)
        except (ValueError, AnsibleFilterError):
            equal = False  # the server will say what is wrong with it when it reads the file
        if not equal:
            differences.append(
                {
                    "name": name,
                    "configured": configured[name],
                    "running": f"{row['setting']}{' ' + row['unit'] if row.get('unit') else ''}",
                    "context": row.get("context"),
                    "pending_restart": bool(row.get("pending_restart")),
                }
            )
    return differences


#: The settings that name libraries the server loads, at start or at each login.
PRELOAD_SETTINGS = ("shared_preload_libraries", "session_preload_libraries", "local_preload_libraries")

#: Library shared object suffix on Linux (DLSUFFIX), tried after the name as given.
_DLSUFFIX = ".so"


def _split_list(value):
    """Entries of a list setting as the server splits them (SplitDirectoriesString): commas,
    surrounding blanks dropped, double quotes around an entry (a doubled one stands for itself)."""
    entries, current, quoted, i = [], "", False, 0
    text = str(value)
    while i < len(text):
        char = text[i]
        if char == '"' and quoted and text[i + 1:i + 2] == '"':
            current, i = current + '"', i + 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            entries.append(current.strip())
            current = ""
        else:
            current += char
        i += 1
    entries.append(current.strip())
    return [entry for entry in entries if entry]


def pg_library_files(settings, libdir):
    """For each library the preload settings in ``settings`` name, the files the server would try to load.

    As PostgreSQL's dfmgr.c does with dynamic_library_path at its default ($libdir): a bare name
    is looked for in ``libdir``, ``$libdir/...`` and other paths as given, each as written and
    then with ``.so``. local_preload_libraries takes bare names from ``$libdir/plugins`` only and
    refuses paths anywhere else (check_restricted_library_name); such an entry gets no files.
    Returns ``[{"setting": name, "library": entry, "files": [...]}]``.
    """
    return [
        {"setting": name, **library}
        for name in PRELOAD_SETTINGS
        if name in settings
        for library in _library_files(settings[name], name, str(libdir).rstrip("/"))
    ]


def _library_files(value, name, libdir):
    plugins = name == "local_preload_libraries"
    found = []
    for entry in _split_list(value):
        path = entry
        if "/" not in path:
            path = f"$libdir/plugins/{path}" if plugins else f"$libdir/{path}"
        if plugins and (not path.startswith("$libdir/plugins/") or "/" in path[len("$libdir/plugins/"):]):
            found.append({"library": entry, "files": []})
            continue
        if path.startswith("$libdir/") or path == "$libdir":
            path = libdir + path[len("$libdir"):]
        files = [path] if path.endswith(_DLSUFFIX) else [path, path + _DLSUFFIX]
        found.append({"library": entry, "files": files})
    return found


class FilterModule:
    """Filters for postgresql.conf values."""

    def filters(self):
        return {
            "pg_conf_value": pg_conf_value,
            "pg_library_files": pg_library_files,
            "pg_settings_diff": pg_settings_diff,
        }
