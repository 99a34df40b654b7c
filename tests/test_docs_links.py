"""Every relative link in the documentation resolves: README.md, CHANGELOG.md and docs/**/*.md.

A link `[text](path)`, `[text](path#anchor)`, an image `![alt](path)` or a reference definition `[ref]: path` must
name a file or folder inside the repository (that git does not ignore, so it exists on GitHub too). An anchor into
a markdown file, or a bare `#anchor`, must be the GitHub slug of one of that file's headings. Links inside code
(fenced blocks and `inline code`) are text, not links; http(s)://, mailto: and other schemes are not checked.
"""
from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets ([`a[0]`](x))
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_HTML_ID = re.compile(r"""<a\s[^>]*?(?:name|id)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def doc_files(root: Path = ROOT) -> list[Path]:
    """The markdown files whose links are checked."""
    files = [root / name for name in ("README.md", "CHANGELOG.md") if (root / name).is_file()]
    files += sorted((root / "docs").rglob("*.md")) if (root / "docs").is_dir() else []
    return files


def _prose_lines(text: str, blank_code: bool = True) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked unless told otherwise."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence) and set(line.strip()) <= {fence[0]}:
                fence = None
            continue
        out.append((number, _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line) if blank_code else line))
    return out


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition outside code."""
    found = []
    for number, line in _prose_lines(text):
        found += [(number, m.group(1)) for m in _INLINE.finditer(line)]
        found += [(number, m.group(1)) for m in _REF_DEF.finditer(line)]
    return [(number, target[1:-1] if target.startswith("<") else target) for number, target in found]


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation and symbols dropped (letters, numbers,
    marks, '-' and '_' stay), each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = (c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LNM" or unicodedata.category(c) == "Pc")
    return "".join(kept).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor GitHub makes in a markdown file: heading slugs (repeats get -1, -2, ...) and HTML ids."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    previous = ""
    for _, line in _prose_lines(text, blank_code=False):
        heading = None
        match = _ATX.match(line)
        if match:
            heading = match.group(2)
        elif _SETEXT.match(line) and previous.strip() and not _ATX.match(previous):
            heading = previous.strip()
        if heading is not None:
            slug = github_slug(heading)
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
        result.update(m.group(1) for m in _HTML_ID.finditer(line))
        previous = line
    return result


def _ignored_by_git(path: Path, root: Path) -> bool:
    try:
        done = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", str(path)], capture_output=True)
    except OSError:  # no git: nothing is known to be ignored
        return False
    return done.returncode == 0


def broken_links(md_file: Path, root: Path = ROOT) -> list[str]:
    """One line per link of `md_file` that does not resolve, naming the file, line, target and why."""
    root = root.resolve()
    text = md_file.read_text(encoding="utf-8")
    problems = []
    for number, target in links(text):
        where = f"{md_file.relative_to(root)}:{number}: {target}"
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # http(s)://, mailto: and the like are not checked
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        if not path_part:
            dest = md_file
        else:
            dest = (root / path_part.lstrip("/")) if path_part.startswith("/") else (md_file.parent / path_part)
            dest = dest.resolve()
            if not dest.is_relative_to(root):
                problems.append(f"{where} (outside the repository)")
                continue
            if not dest.exists():
                problems.append(f"{where} (no such file)")
                continue
            if _ignored_by_git(dest, root):
                problems.append(f"{where} (ignored by git, so not in the repository)")
                continue
        if anchor and dest.is_file() and dest.suffix.lower() in (".md", ".markdown"):
            if unquote(anchor) not in anchors(dest.read_text(encoding="utf-8")):
                problems.append(f"{where} (no heading with anchor #{anchor} in {dest.relative_to(root)})")
    return problems


# --- the helpers can fail ----------------------------------------------------------------------------------------


def test_github_slugs():
    assert github_slug("Results on MiniMMEB") == "results-on-minimmeb"
    assert github_slug("What half of AlwaysAug's latency would cost: the pilot's frontier") == (
        "what-half-of-alwaysaugs-latency-would-cost-the-pilots-frontier"
    )
    assert github_slug("Fine-tuning ablations: temperature and λ") == "fine-tuning-ablations-temperature-and-λ"
    assert github_slug("The `/embed` path, 5× faster (v2.0)") == "the-embed-path-5-faster-v20"
    assert github_slug("snake_case and  two spaces") == "snake_case-and--two-spaces"
    assert github_slug("A [linked](x.md) heading") == "a-linked-heading"


def test_the_checker_reports_broken_links_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "real.md").write_text(
        "# Real page\n\n## Section two\n\n## Section two\n\n### The `/embed` path\n\n```\n# not a heading\n```\n",
        encoding="utf-8",
    )
    (tmp_path / "img.png").write_bytes(b"")
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n"
        "[ok](docs/real.md) [ok anchor](docs/real.md#section-two) [repeat](docs/real.md#section-two-1) ![ok](img.png)\n"
        "[code heading](docs/real.md#the-embed-path) [fenced](docs/real.md#not-a-heading)\n"
        "[self](#top) [web](https://example.com/missing.md) [mail](mailto:a@b.c)\n"
        "`[in code](missing-in-code.md)`\n\n"
        "```\n[in a fence](missing-in-fence.md)\n```\n\n"
        "[missing](docs/missing.md) ![gone](pics/gone.png) [bad anchor](docs/real.md#section-three)\n"
        "[bad self](#nowhere) [outside](../elsewhere.md)\n\n"
        "[ref]: docs/absent.md\n",
        encoding="utf-8",
    )
    problems = broken_links(page, root=tmp_path)
    targets = [p.split(": ", 1)[1].split(" (")[0] for p in problems]
    assert targets == [
        "docs/real.md#not-a-heading", "docs/missing.md", "pics/gone.png", "docs/real.md#section-three", "#nowhere",
        "../elsewhere.md", "docs/absent.md",
    ], problems
    assert problems[1].startswith("README.md:12: ")


def test_every_relative_link_in_the_docs_resolves():
    files = doc_files()
    assert ROOT / "README.md" in files and any(f.parent.name == "docs" for f in files)
    problems = [problem for md_file in files for problem in broken_links(md_file)]
    assert not problems, "broken links:\n" + "\n".join(problems)
