"""pg_conf_value: whatever the input, a postgresql.conf line holds one parameter and reads back as given.

The reader below follows PostgreSQL's own lexer for configuration files
(src/backend/utils/misc/guc-file.l: token patterns and DeescapeQuotedString), so each
rendered line is checked the way the server will read it, not against our own writer.
"""

import re

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pg_config import pg_conf_value
from hypothesis import given
from hypothesis import strategies as st

# guc-file.l's rules in its order: for matches of equal length flex takes the first rule.
_LETTER = r"[A-Za-z_\x80-\xff]"
_LETTER_OR_DIGIT = r"[A-Za-z_0-9\x80-\xff]"
_ID = rf"{_LETTER}{_LETTER_OR_DIGIT}*"
_TOKENS = [
    ("WS", r"[ \t\r]+"),
    ("COMMENT", r"#.*"),
    ("ID", _ID),
    ("QUALIFIED_ID", rf"{_ID}\.{_ID}"),
    ("STRING", r"'(?:[^'\\\n]|\\.|'')*'"),
    ("UNQUOTED_STRING", rf"{_LETTER}(?:{_LETTER_OR_DIGIT}|[-._:/])*"),
    ("INTEGER", r"[-+]?(?:[0-9]+|0x[0-9a-fA-F]+)[a-zA-Z]*"),
    ("REAL", r"[-+]?[0-9]*\.[0-9]*(?:[Ee][-+]?[0-9]+)?"),
    ("EQUALS", r"="),
]


def _tokens(line):
    """Longest match first, as flex does; anything else is a token the grammar rejects."""
    position, out = 0, []
    while position < len(line):
        best = max(
            ((kind, re.compile(pattern).match(line, position)) for kind, pattern in _TOKENS),
            key=lambda found: found[1].end() if found[1] else -1,
        )
        kind, match = best
        if not match or match.end() == position:
            raise SyntaxError(f"no token at {line[position:]!r}")
        if kind not in ("WS", "COMMENT"):
            out.append((kind, match.group()))
        position = match.end()
    return out


def _deescape(quoted):
    """DeescapeQuotedString: \\b \\f \\n \\r \\t, octal \\ooo, any other \\x is x, '' is '."""
    body, out, i = quoted[1:-1], [], 0
    simple = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
    while i < len(body):
        char = body[i]
        if char == "\\":
            nxt = body[i + 1]
            octal = re.match(r"[0-7]{1,3}", body[i + 1:])
            if octal:
                out.append(chr(int(octal.group(), 8)))
                i += 1 + len(octal.group())
                continue
            out.append(simple.get(nxt, nxt))
            i += 2
        elif char == "'":
            out.append("'")
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def read_line(line):
    """One `name = value` line as PostgreSQL's parser reads it: (name, value)."""
    if "\n" in line:
        raise SyntaxError("more than one line")
    tokens = _tokens(line)
    if tokens and tokens[1:2] == [("EQUALS", "=")]:
        tokens = tokens[:1] + tokens[2:]  # the "=" is optional
    if len(tokens) != 2 or tokens[0][0] not in ("ID", "QUALIFIED_ID"):
        raise SyntaxError(f"not one name and one value: {tokens}")
    kind, text = tokens[1]
    if kind not in ("STRING", "UNQUOTED_STRING", "INTEGER", "REAL", "ID", "QUALIFIED_ID"):
        raise SyntaxError(f"not a value: {tokens[1]}")
    return tokens[0][1], _deescape(text) if kind == "STRING" else text


def render(value, name="log_line_prefix"):
    return f"{name} = {pg_conf_value(value, name)}"


@pytest.mark.parametrize(
    ("sentence", "value", "written"),
    [
        ("a whole size stays bare", "128MB", "128MB"),
        ("an integer stays bare", 200, "200"),
        ("a number with a fraction stays bare", 1.1, "1.1"),
        ("a word stays bare", "try", "try"),
        ("true is on", True, "on"),
        ("false is off", False, "off"),
        ("a fractional size is quoted (the server refuses it bare)", "1.5GB", "'1.5GB'"),
        ("a space is quoted", "%m [%p] ", "'%m [%p] '"),
        ("a quote is doubled", "it's", "'it''s'"),
        ("a # is inside the quotes, not a comment", "a # b", "'a # b'"),
        ("a backslash is doubled", "C:\\x", "'C:\\\\x'"),
        ("a trailing backslash cannot escape the closing quote", "x\\", "'x\\\\'"),
        ("an exponent without a point is quoted", 1e-05, "'1e-05'"),
        ("a digit outside ASCII is quoted", "\u0663MB", "'\u0663MB'"),
    ],
)
def test_rendering(sentence, value, written):
    assert pg_conf_value(value) == written, sentence


@pytest.mark.parametrize(
    "hostile",
    [
        "x' \nfsync = off",
        "x'\rfsync = off",
        "on\nshared_preload_libraries = 'evil'",
        "tab\there",
        "nul\x00",
        "del\x7f",
    ],
)
def test_a_control_character_is_refused_naming_the_parameter(hostile):
    with pytest.raises(AnsibleFilterError, match=r"log_line_prefix: .* newline or another control character"):
        pg_conf_value(hostile, "log_line_prefix")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"a": 1}, ["a"], None])
def test_values_that_are_not_one_number_or_string_are_refused(value):
    with pytest.raises(AnsibleFilterError, match="work_mem"):
        pg_conf_value(value, "work_mem")


@pytest.mark.parametrize(
    "hostile",
    [
        "x' fsync = 'off",
        "x'' # fsync = off",
        "' , fsync = off, '",
        "\\' fsync = off #",
        "\\",
        "\\\\'",
        "'; DROP TABLE t; --",
        "# everything after is a comment",
        "a = b",
        "\\012fsync = off",
    ],
)
def test_hostile_values_read_back_as_one_parameter_with_exactly_that_value(hostile):
    assert read_line(render(hostile)) == ("log_line_prefix", hostile)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
def test_any_printable_value_reads_back_as_given(value):
    assert read_line(render(value)) == ("log_line_prefix", value)


@given(st.one_of(st.integers(-(2**31), 2**31), st.floats(allow_nan=False, allow_infinity=False)))
def test_any_number_reads_back_as_the_same_number(number):
    name, text = read_line(render(number, "random_page_cost"))
    assert float(text) == number
