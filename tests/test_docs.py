"""The documentation: a short README, results that name the command behind every table, reference pages
generated from the code, and a site that builds with ``mkdocs build --strict``."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = sorted((ROOT / "docs" / "results").glob("*.md"))
# A command that regenerates a measurement: a fewstep run, a script of the repository or a make target,
# in backticks or a code block, possibly after environment variables or nice.
COMMAND = re.compile(r"(?:`|^)\s*(?:[A-Z_]+=\S+\s+)*(?:nice -n \d+ )?(?:fewstep (?:eval|bench|train|distill|generate)\b"
                     r"|python scripts/\w+\.py|bash scripts/\w+\.sh|make [\w-]+)", re.M)


def _sections(text: str) -> list[str]:
    """The page cut at each heading (lines starting with ``#`` outside code blocks)."""
    sections, current, fenced = [], [], False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        if line.startswith("#") and not fenced and current:
            sections.append("\n".join(current))
            current = []
        current.append(line)
    return sections + ["\n".join(current)]


def _tables_with_context(section: str) -> list[tuple[str, str]]:
    """Each table of a section, as (its header row, the text around it): from the end of the table before
    it (or the section's start) to the start of the table after it (or the section's end)."""
    lines = section.splitlines()
    spans, start = [], None
    for i, line in enumerate([*lines, ""]):
        if line.startswith("|") and start is None:
            start = i
        elif not line.startswith("|") and start is not None:
            spans.append((start, i))
            start = None
    result = []
    for k, (first, _last) in enumerate(spans):
        before = spans[k - 1][1] if k else 0
        after = spans[k + 1][0] if k + 1 < len(spans) else len(lines)
        result.append((lines[first], "\n".join(lines[before:after])))
    return result


def _gen_reference():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_is_a_front_page():
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= 16 * 1024, f"README.md is {readme.stat().st_size} bytes; move detail to docs/"
    text = readme.read_text()
    assert "make demo" in text and "make test" in text


def test_readme_links_point_to_files():
    text = (ROOT / "README.md").read_text()
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    assert targets
    assert [t for t in targets if not (ROOT / t).exists()] == []


def test_every_results_table_names_its_command():
    assert len(RESULTS) >= 5
    bare = []
    for page in RESULTS:
        for section in _sections(page.read_text()):
            for header, context in _tables_with_context(section):
                if not COMMAND.search(context):
                    bare.append(f"{page.name}: {section.splitlines()[0]} / {header[:60]}")
    assert bare == [], "results tables without the command that regenerates them (beside the table)"


def test_generated_reference_pages_are_current():
    """docs/reference/*.md and docs/settings.md come from the parser and the declarations: regenerate them
    with `python scripts/gen_reference.py` (or `make docs`) after changing an option or a setting."""
    assert _gen_reference().stale_pages() == []


def test_every_option_is_in_the_cli_reference():
    from fewstep.cli import _parser

    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    options = {o for sub in _gen_reference()._subcommands(_parser()) for a in sub[2]._actions
               for o in a.option_strings if o.startswith("--") and o != "--help"}
    assert options and {o for o in options if f"`{o}`" not in page} == set()


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs / mkdocstrings not installed (the dev or docs extra installs them)")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
