"""MkDocs hooks: the reference sections generated from the code (streamer.ops.reference)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's streamer

from streamer.ops.reference import cli_markdown, settings_markdown

MARKERS = {
    "<!-- settings-reference -->": settings_markdown,
    "<!-- cli-reference -->": cli_markdown,
}


def on_page_markdown(markdown: str, **_: Any) -> str:
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
