"""The front page and the docs: README.md stays short, and every relative link in README.md,
docs/*.md and benchmarks/README.md leads somewhere: the file exists and an #anchor names a
heading of the page it points into, as GitHub makes anchors from headings."""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_LINES = 300

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)")
INLINE_LINK = re.compile(r"\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
LINK_TEXT = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def pages():
    found = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "benchmarks", "README.md")]
    return found + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def prose_lines(text):
    """(line number, line) outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = None
        else:
            yield number, line


def slug(heading):
    """GitHub's anchor for a heading: the text as rendered (link syntax and markup gone),
    lowercased, characters other than letters, digits, spaces, hyphens and underscores
    dropped, spaces made hyphens."""
    text = LINK_TEXT.sub(r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text):
    """Every heading's anchor, a repeated one with -1, -2, ... as GitHub numbers them."""
    seen, result = {}, set()
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(text):
    """(line number, target) of every link outside code blocks and inline code."""
    for number, line in prose_lines(text):
        line = CODE_SPAN.sub("code", line)
        for match in INLINE_LINK.finditer(line):
            yield number, match.group(1)
        match = REFERENCE_LINK.match(line)
        if match:
            yield number, match.group(1)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def broken_links(page):
    """'page:line: target (why)' for each relative link of the page that leads nowhere."""
    text, problems = read(page), []
    folder = os.path.dirname(page)
    for number, target in links(text):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        where = os.path.normpath(os.path.join(folder, path)) if path else page
        why = None
        if not os.path.exists(where):
            why = "no such file"
        elif anchor and where.endswith(".md") and anchor not in anchors(read(where)):
            why = f"no heading with the anchor #{anchor} in {os.path.relpath(where, ROOT)}"
        elif anchor and not where.endswith(".md"):
            why = "an anchor into a file that is not Markdown"
        if why:
            problems.append(f"{os.path.relpath(page, ROOT)}:{number}: {target} ({why})")
    return problems


def test_slugs_follow_githubs_rules():
    assert slug("The study's table: one grid, two commands") == "the-studys-table-one-grid-two-commands"
    assert slug("What made the difference (found with `torch.profiler` first)") == \
        "what-made-the-difference-found-with-torchprofiler-first"
    assert slug("Fast dropout mask vs stock `F.dropout`") == "fast-dropout-mask-vs-stock-fdropout"
    assert slug("train.py") == "trainpy" and slug("the_name -- x") == "the_name----x"
    assert slug("[A link](elsewhere.md) heading") == "a-link-heading"
    text = "# Notes\n## Notes\n```\n# Notes (code, not a heading)\n```\n### Notes ###\n"
    assert anchors(text) == {"notes", "notes-1", "notes-2"}


def test_link_finder_skips_code():
    text = "[a](a.md) `[b](b.md)` ``x `[c](c.md)` y``\n```\n[d](d.md)\n```\n![e](e.png \"title\")\n[f]: f.md\n"
    assert [target for _, target in links(text)] == ["a.md", "e.png", "f.md"]


def test_every_relative_link_resolves():
    problems = [problem for page in pages() for problem in broken_links(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(os.path.join(ROOT, target.partition("#")[0]))
              for _, target in links(read(os.path.join(ROOT, "README.md")))}
    unlinked = [os.path.relpath(page, ROOT) for page in glob.glob(os.path.join(ROOT, "docs", "*.md"))
                if page not in linked]
    assert not unlinked, f"docs pages the README does not link to: {unlinked}"


def test_readme_is_a_front_page():
    lines = read(os.path.join(ROOT, "README.md")).splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
