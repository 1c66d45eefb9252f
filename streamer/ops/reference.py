"""The reference pages of the documentation, generated from the code: every setting (from the
settings classes, their defaults and their ``#:`` comments) and every command (from the parser).
``docs/hooks.py`` puts them into the pages at build time, so they cannot drift from the code."""

from __future__ import annotations

import argparse
import ast
import inspect
from typing import Any

from pydantic import BaseModel

from streamer import settings as settings_module
from streamer.config import variable
from streamer.settings import Settings

__all__ = ["cli_markdown", "commands_of", "settings_markdown"]


def _comments(cls: type) -> dict[str, str]:
    """Each field's ``#:`` comment lines, joined, from the class's source."""
    tree = ast.parse(inspect.getsource(settings_module))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    source = inspect.getsource(settings_module).splitlines()
    out: dict[str, str] = {}
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            text: list[str] = []
            i = item.lineno - 2
            while i >= 0 and source[i].strip().startswith("#:"):
                text.insert(0, source[i].strip()[2:].strip())
                i -= 1
            out[item.target.id] = " ".join(text)
    return out


def _default(info: Any) -> str:
    if info.default_factory is not None:
        return "(computed)" if info.default_factory.__name__ != "gethostname" else "host name"
    value = info.default
    if value is None or value == "":
        return "unset"
    if isinstance(value, BaseModel):
        return ""
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def settings_markdown() -> str:
    """A table per group: the setting's name in the file, its variable, default and meaning."""
    parts: list[str] = []
    groups: list[tuple[str, type[BaseModel], str]] = [("", Settings, "")]
    for name, info in Settings.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            groups.append((name, info.annotation, f"[{name}]"))
    for group, cls, header in groups:
        comments = _comments(cls)
        title = f"`{header}`" if header else "top level"
        rows = [
            f"### {title}",
            "",
            "| in the file | variable | default | meaning |",
            "|---|---|---|---|",
        ]
        for field, info in cls.model_fields.items():
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                continue
            dotted = f"{group}.{field}" if group else field
            rows.append(
                f"| `{field}` | `{variable(dotted)}` | {_cell(_default(info))} | "
                f"{_cell(comments.get(field, ''))} |"
            )
        parts.append("\n".join(rows))
    return "\n\n".join(parts) + "\n"


def commands_of(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under ``parser`` with the words that reach it: ``(("state", "get"), p)``."""
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += commands_of(sub, (*path, name))
    return out


def cli_markdown() -> str:
    """Every command's ``--help``, as the parser prints it (80 columns)."""
    import os

    from streamer.ops.cli import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        parts = []
        for path, parser in commands_of(build_parser()):
            leaf = not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
            if path and not leaf:
                continue
            title = " ".join(("streamer", *path))
            parts.append(f"### `{title}`\n\n```text\n{parser.format_help().rstrip()}\n```")
        return "\n\n".join(parts) + "\n"
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
