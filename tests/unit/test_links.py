"""Every relative Markdown link in the documentation points at a file that exists, and every
#anchor into a Markdown file at one of its headings (GitHub's anchors). External links are not
checked."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted(
    {ROOT / "README.md", ROOT / "bench" / "README.md"}
    | set(ROOT.glob("docs/*.md"))
    | set(ROOT.glob("roles/*/README.md"))
    | set(ROOT.glob("examples/*.md"))
)

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target), with an optional "title"; text may hold one level of [...].
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def prose_lines(text):
    """The lines outside fenced code blocks, with their numbers."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def anchor(heading):
    """GitHub's anchor of a heading: markup gone, lowercase, punctuation but - and _ removed, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor a Markdown file's headings give, repeated headings numbered as GitHub does."""
    seen, result = {}, set()
    for _number, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if match:
            base = anchor(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path):
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for match in LINK.finditer(CODE_SPAN.sub("code", line)):
            yield number, match.group(1)


def broken_links(path):
    """(line, target, why) for each relative link of path that leads nowhere."""
    found = []
    for number, target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _sep, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            found.append((number, target, "no such file"))
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            found.append((number, target, f"no heading #{fragment} in {dest.name}"))
    return found


def test_the_documentation_files_are_found():
    names = {str(path.relative_to(ROOT)) for path in DOCS}
    assert {"README.md", "docs/sizing.md", "roles/pgbouncer/README.md", "bench/README.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(path):
    broken = broken_links(path)
    assert not broken, "\n".join(f"{path.relative_to(ROOT)}:{n}: ({t}) {why}" for n, t, why in broken)


def test_githubs_anchor_rules():
    assert anchor("`site.yml`, in order") == "siteyml-in-order"
    assert anchor('`pgbouncer`: a pooler that ends "too many clients"') == "pgbouncer-a-pooler-that-ends-too-many-clients"
    assert anchor("Proof: `molecule test -s pgbouncer`") == "proof-molecule-test--s-pgbouncer"
    assert anchor("Running from AWX / Automation Controller") == "running-from-awx--automation-controller"
    assert anchor("Snake_case and 4. Numbers") == "snake_case-and-4-numbers"


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "there.md").write_text("# A heading\n\n## The same\n\n## The same\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](there.md) [ok](there.md#a-heading) [ok](there.md#the-same-1) [ok](#page) [ext](https://x.invalid/y)\n"
        "`[in code](nowhere.md)`\n"
        "```\n[in a fence](nowhere.md)\n```\n"
        "[missing](nowhere.md) [bad anchor](there.md#no-such) [bad local](#nope) ![img](gone.png)\n",
        encoding="utf-8",
    )
    assert [target for _n, target, _why in broken_links(page)] == [
        "nowhere.md",
        "there.md#no-such",
        "#nope",
        "gone.png",
    ]
