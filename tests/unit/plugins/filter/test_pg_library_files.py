"""pg_library_files: the files the server would load for a *_preload_libraries value."""

import pytest
from ansible_collections.headroom.pg.plugins.filter.pg_config import pg_library_files

LIB = "/usr/lib/postgresql/17/lib"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        # A bare name is looked for in $libdir, as written and with .so.
        ("shared_preload_libraries", "pg_stat_statements",
         [{"library": "pg_stat_statements", "files": [f"{LIB}/pg_stat_statements", f"{LIB}/pg_stat_statements.so"]}]),
        # Entries are split on commas, blanks around them dropped.
        ("session_preload_libraries", " auto_explain , pg_prewarm",
         [{"library": "auto_explain", "files": [f"{LIB}/auto_explain", f"{LIB}/auto_explain.so"]},
          {"library": "pg_prewarm", "files": [f"{LIB}/pg_prewarm", f"{LIB}/pg_prewarm.so"]}]),
        # An empty value loads nothing.
        ("shared_preload_libraries", "", []),
        # $libdir is the library directory; a name with .so is not given a second one.
        ("shared_preload_libraries", "$libdir/auto_explain.so",
         [{"library": "$libdir/auto_explain.so", "files": [f"{LIB}/auto_explain.so"]}]),
        # An absolute path stays as it is.
        ("shared_preload_libraries", "/opt/lib/x",
         [{"library": "/opt/lib/x", "files": ["/opt/lib/x", "/opt/lib/x.so"]}]),
        # Double quotes keep a comma inside one entry.
        ("shared_preload_libraries", '"a,b"', [{"library": "a,b", "files": [f"{LIB}/a,b", f"{LIB}/a,b.so"]}]),
        # local_preload_libraries: bare names come from $libdir/plugins.
        ("local_preload_libraries", "auto_explain",
         [{"library": "auto_explain", "files": [f"{LIB}/plugins/auto_explain", f"{LIB}/plugins/auto_explain.so"]}]),
        # ... and a path anywhere else is refused by the server: no file would do.
        ("local_preload_libraries", "$libdir/auto_explain", [{"library": "$libdir/auto_explain", "files": []}]),
        ("local_preload_libraries", "/tmp/evil", [{"library": "/tmp/evil", "files": []}]),
    ],
)
def test_library_files(name, value, expected):
    expected = [{"setting": name, **library} for library in expected]
    assert pg_library_files({name: value, "work_mem": "4MB"}, LIB + "/") == expected


def test_settings_without_libraries_load_nothing():
    assert pg_library_files({"work_mem": "4MB"}, LIB) == []
