"""The documentation: the site builds with warnings as errors, its Python examples run, and the
README stays a short front page."""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_site_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert r.returncode == 0, r.stderr
    settings = (tmp_path / "site" / "configuration" / "index.html").read_text()
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    # generated from the code: every setting and every command is there
    for name in ("STREAMER_KAFKA__BOOTSTRAP_SERVERS", "STREAMER_BATCH__MAX_WAIT_S", "app_id"):
        assert name in settings
    for command in ("streamer state list", "streamer model publish", "streamer tail"):
        assert command in cli
    assert "settings-reference" not in settings and "cli-reference" not in cli


def test_the_python_api_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = doctest.testfile(str(ROOT / "docs" / "python.md"), module_relative=False)
    assert result.attempted > 5 and result.failed == 0


def test_the_readme_is_a_front_page() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 160
    assert "<!-- quickstart -->" in text and "FIXME" not in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).is_file(), page
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert not re.search(r"\bissues?\b", doc.read_text(), re.IGNORECASE), doc
