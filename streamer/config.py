"""Where settings come from besides code: the configuration file (TOML) and the environment, with
their checks (a key or a ``STREAMER_*`` variable that names no setting is an error that says which
was meant). :class:`streamer.settings.Settings` uses these sources; see its module for the order."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_settings import EnvSettingsSource, PydanticBaseSettingsSource

from streamer.errors import ConfigError

__all__ = [
    "CONFIG_FILE",
    "TOOL_VARIABLES",
    "CheckedEnv",
    "FileSource",
    "config_path",
    "file_values",
    "read_config",
    "unknown_variables",
    "variable",
]

#: The configuration file looked for in the working directory.
CONFIG_FILE = "streamer.toml"
#: ``STREAMER_*`` variables that are no setting but are read by streamer's tools.
TOOL_VARIABLES = frozenset(
    {"STREAMER_CONFIG", "STREAMER_CACHE", "STREAMER_SERVICES_DIR", "STREAMER_TEST_DEVICE"}
)


#: The configuration file's settings while :meth:`Settings.load` builds one (else none).
_FILE_VALUES: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "streamer_config_file", default=None
)


class FileSource(PydanticBaseSettingsSource):
    """The settings of the configuration file :meth:`Settings.load` read, checked already."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # (unused: __call__ gives all values at once)

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get() or {})


class CheckedEnv(EnvSettingsSource):
    """``STREAMER_*`` variables, refused when one names no setting (a typo would otherwise be
    ignored in silence)."""

    def __call__(self) -> dict[str, Any]:
        unknown_variables(os.environ, self.settings_cls)
        return super().__call__()


def _names(settings_cls: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """Every setting's dotted name and where it sits: ``{"kafka.client": ("kafka", "client")}``."""
    out: dict[str, tuple[str, ...]] = {}
    for name, info in settings_cls.model_fields.items():
        group = info.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            for sub in group.model_fields:
                out[f"{name}.{sub}"] = (name, sub)
        else:
            out[name] = (name,)
    return out


def variable(name: str) -> str:
    """The environment variable of a dotted setting name.

    >>> variable("kafka.bootstrap_servers")
    'STREAMER_KAFKA__BOOTSTRAP_SERVERS'
    """
    return "STREAMER_" + name.upper().replace(".", "__")


def _did_you_mean(word: str, choices: Iterator[str] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_variables(
    environ: Mapping[str, str], settings_cls: type[BaseModel] | None = None
) -> None:
    """Raise :class:`ConfigError` for a ``STREAMER_*`` variable that names no setting.

    >>> unknown_variables({"STREAMER_APPID": "x"})
    Traceback (most recent call last):
    ...
    streamer.errors.ConfigError: STREAMER_APPID names no setting (did you mean STREAMER_APP_ID?)
    """
    known = {variable(n) for n in _names(settings_cls or _settings())} | TOOL_VARIABLES
    for key in sorted(environ):
        upper = key.upper()
        if upper.startswith("STREAMER_") and upper not in known:
            raise ConfigError(f"{key} names no setting{_did_you_mean(upper, sorted(known))}")


def config_path(config: Path | str | None = None) -> Path | None:
    """The configuration file to read: ``config``, else ``$STREAMER_CONFIG``, else
    ``streamer.toml`` in the working directory if it exists, else none. One named but missing
    is a :class:`ConfigError`."""
    named = config or os.environ.get("STREAMER_CONFIG")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"no configuration file at {path}")
        return path
    here = Path(CONFIG_FILE)
    return here if here.is_file() else None


def read_config(path: Path, settings_cls: type[BaseModel] | None = None) -> dict[str, Any]:
    """A configuration file's settings, as nested mappings; unknown keys, tables where values
    belong (and the reverse) and TOML errors are :class:`ConfigError` naming the file."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is no valid TOML: {exc}") from None
    names = _names(settings_cls or _settings())
    groups = {n[0] for n in names.values() if len(n) == 2}
    base = path.resolve().parent
    out: dict[str, Any] = {}

    def unknown(key: str) -> ConfigError:
        return ConfigError(f"{path}: {key} names no setting{_did_you_mean(key, list(names))}")

    for key, value in doc.items():
        if key in groups:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {key} is a table ([{key}]), not a value")
            for sub, v in value.items():
                if f"{key}.{sub}" not in names:
                    raise unknown(f"{key}.{sub}")
                if isinstance(v, dict):
                    raise ConfigError(f"{path}: {key}.{sub} is a value, not a table")
            out[key] = {sub: _relative(f"{key}.{sub}", v, base) for sub, v in value.items()}
        elif key in names:
            if isinstance(value, dict):
                raise ConfigError(f"{path}: {key} is a value, not a table")
            out[key] = _relative(key, value, base)
        else:
            raise unknown(key)
    return out


#: The settings that are paths: relative ones in a configuration file are relative to it.
_PATHS = frozenset(
    {
        "model_path",
        "kafka.ssl_cafile",
        "kafka.ssl_certfile",
        "kafka.ssl_keyfile",
        "redis.ssl_ca_certs",
    }
)


def _relative(name: str, value: Any, base: Path) -> Any:
    if name in _PATHS and isinstance(value, str) and value and not Path(value).is_absolute():
        return str(base / value)
    return value


@contextlib.contextmanager
def file_values(values: Mapping[str, Any]) -> Iterator[None]:
    """While inside, :class:`FileSource` gives ``values`` (a configuration file's, read)."""
    token = _FILE_VALUES.set(values)
    try:
        yield
    finally:
        _FILE_VALUES.reset(token)


def _settings() -> type[BaseModel]:
    from streamer.settings import Settings

    return Settings
