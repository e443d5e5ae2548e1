"""Citations of the repository's docs pages resolve: a `docs/<page>.md §N.N` reference in code, tests,
benchmarks or docs names a page that exists and a numbered heading that exists in it, and nothing cites
a document kept outside the repository (the fixtures' facts once pointed at one, and a reader could not
follow them)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("src", "tests", "benchmarks", "docs")
# A docs page, then the section tokens that follow it: `docs/x.md §1.2, §3 and §4.1 to §4.3`.
CITATION = re.compile(
    r"(?<![\w/.-])docs/(?P<page>[\w./-]+\.md)(?P<sections>(?:(?:\s*,\s*|\s+and\s+|\s+to\s+|\s+)§\S+)*)"
)
SECTION_NUMBER = re.compile(r"\d+(?:\.\d+)*")
# A page name right before a section mark with no docs/ in front: a document the repository may not hold.
UNROOTED = re.compile(r"(?<![\w/])(?P<page>[\w-]+\.md)`?\s*§")
OUTSIDE = re.compile(r"/work/shared|shared/reference")


def _headings(page: Path) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^#+\s+(.*)$", page.read_text(encoding="utf-8"), re.MULTILINE)]


def _has_section(headings: list[str], number: str) -> bool:
    # "1" names "## 1. microsoft/..." and "0.1" names "### 0.1 The ...", but "1" does not name "1.1 ...".
    return any(re.match(rf"{re.escape(number)}\.?\s", heading) for heading in headings)


def citation_problems(text: str, root: Path) -> list[str]:
    """Every citation in `text` that does not resolve under `root`, as a readable line."""
    problems = [f"cites a document outside the repository: {m.group(0)!r}" for m in OUTSIDE.finditer(text)]
    problems += [f"cites {m.group('page')} without its docs/ path" for m in UNROOTED.finditer(text)]
    for match in CITATION.finditer(text):
        page = root / "docs" / match.group("page")
        if not page.is_file():
            problems.append(f"cites docs/{match.group('page')}, which does not exist")
            continue
        headings = _headings(page)
        for token in re.findall(r"§([^\s,;)`'\"]+)", match.group("sections")):
            number = token.rstrip(".")
            if not SECTION_NUMBER.fullmatch(number):
                problems.append(f"docs/{match.group('page')} §{number}: a section is cited by its number")
            elif not _has_section(headings, number):
                problems.append(f"docs/{match.group('page')} has no section {number}")
    return problems


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in SCANNED:
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.suffix in (".py", ".md")]
    return [p for p in files if p != Path(__file__).resolve()]


def test_every_docs_citation_names_an_existing_page_and_section() -> None:
    problems = [
        f"{path.relative_to(ROOT)}: {problem}"
        for path in _scanned_files()
        for problem in citation_problems(path.read_text(encoding="utf-8"), ROOT)
    ]
    assert not problems, "\n".join(problems)


def test_the_fixtures_cite_the_phi_model_files_page() -> None:
    # The check above passes vacuously if no citation matches its pattern; the fixtures do cite.
    text = (ROOT / "tests/fixtures/phi3_tensors.py").read_text(encoding="utf-8")
    assert [m.group("page") for m in CITATION.finditer(text)] == ["phi_model_files.md"]


def _docs_tree(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/page.md").write_text("# Page\n\n## 1. Models\n\n### 1.2 Config\n", encoding="utf-8")
    return tmp_path


def test_resolving_citations_pass(tmp_path: Path) -> None:
    root = _docs_tree(tmp_path)
    assert citation_problems("see docs/page.md §1, §1.2 and docs/page.md.", root) == []


def test_a_missing_section_page_or_unrooted_reference_is_reported(tmp_path: Path) -> None:
    root = _docs_tree(tmp_path)
    assert citation_problems("(docs/page.md §1.3)", root) == ["docs/page.md has no section 1.3"]
    assert citation_problems("docs/page.md §1.2 to §2", root) == ["docs/page.md has no section 2"]
    assert citation_problems("docs/page.md §1.1-1.2", root) == [
        "docs/page.md §1.1-1.2: a section is cited by its number"
    ]
    assert citation_problems("docs/gone.md §1", root) == ["cites docs/gone.md, which does not exist"]
    assert citation_problems("(page.md §1.2)", root) == ["cites page.md without its docs/ path"]
    assert citation_problems("the oracle is /work/shared/x.md", root) == [
        "cites a document outside the repository: '/work/shared'"
    ]
