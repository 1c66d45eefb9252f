"""The command line's building blocks: the parser class and its help, the settings flags a
command can take and the settings they override, and the argument types."""

from __future__ import annotations

import argparse
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

from streamer.config import CONFIG_FILE, variable
from streamer.settings import Settings


class _Help(argparse.HelpFormatter):
    """Help that names every option's default (those without one come from the settings and
    say so themselves)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or _no_default(action):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


def _no_default(action: argparse.Action) -> bool:
    """An option without a default to show: none, a flag's False, or suppressed (a default of 0
    is one to show, although ``0 == False``)."""
    return any(action.default is v for v in (None, False, argparse.SUPPRESS))


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings of a command: its flags over ``STREAMER_*`` variables over the
    configuration file (``--config``, ``$STREAMER_CONFIG`` or ``./streamer.toml``)."""
    over: dict[str, Any] = {}
    for _, flag, _, _, _, name in _FLAGS:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is None:
            continue
        group, _, field = name.rpartition(".")
        if group:
            over.setdefault(group, {})[field] = value
        else:
            over[field] = value
    return Settings.load(getattr(args, "config", None), over)


def setting_help(text: str, name: str) -> str:
    """``text``, the setting's default and where else it can be set."""
    group, _, field = name.rpartition(".")
    owner: Any = Settings.model_fields[group].annotation if group else Settings
    default = owner.model_fields[field].default
    shown = "" if default in (None, "") else f"default: {default}; "
    return f"{text} ({shown}{variable(name)}, {name} in {CONFIG_FILE})"


#: The settings flags: (the ``options`` keyword that turns it on, flag, metavar, type, what it
#: sets, the setting)
_FLAGS: tuple[tuple[str, str, str, Any, str, str], ...] = (
    ("kafka", "--bootstrap-servers", "HOST:PORT", str, "Kafka brokers", "kafka.bootstrap_servers"),
    ("redis", "--redis-url", "URL", str, "Redis", "redis.url"),
    (
        "model_name",
        "--model-name",
        "NAME",
        str,
        "model name in state keys and the registry",
        "model_name",
    ),
    ("app_id", "--app-id", "ID", str, "the workers' consumer group", "app_id"),
    ("model_path", "--model", "DIR", Path, "model artifact", "model_path"),
    (
        "events",
        "--events-topic",
        "TOPIC",
        str,
        "events topic; its dead letters go to TOPIC.dlq",
        "topics.events",
    ),
    (
        "predictions",
        "--predictions-topic",
        "TOPIC",
        str,
        "predictions topic; window predictions go to TOPIC.windows",
        "topics.predictions",
    ),
    ("engine", "--engine", "NAME", str, "streamer (the fastest) or faust", "engine"),
)


def options(**wanted: bool) -> Parser:
    """``--config``, and the settings flags a command uses: ``kafka``, ``redis``, ``model_name``,
    ``app_id``, ``model_path``, ``events``, ``predictions``, ``engine``."""
    unknown = set(wanted) - {f[0] for f in _FLAGS}
    assert not unknown, unknown
    o = Parser(add_help=False)
    o.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"configuration file (default: $STREAMER_CONFIG, else ./{CONFIG_FILE} if present)",
    )
    for key, flag, metavar, kind, text, setting in _FLAGS:
        if wanted.get(key):
            o.add_argument(flag, type=kind, metavar=metavar, help=setting_help(text, setting))
    return o


def columns(p: argparse.ArgumentParser) -> None:
    """The long format's column names, for files whose columns are named otherwise."""
    p.add_argument("--id-col", default="unique_id", metavar="COL", help="entity id column")
    p.add_argument("--time-col", default="ds", metavar="COL", help="time column")
    p.add_argument("--target-col", default="y", metavar="COL", help="target column")


def positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v

    return parse


def names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def season(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return v


def seasons(text: str) -> tuple[int | None, int]:
    """``auto`` -> (None, 0); ``12`` -> (12, 0); ``24,168`` -> a second season too.

    >>> seasons("auto"), seasons("0"), seasons("24,168"), seasons("auto,168")
    ((None, 0), (0, 0), (24, 168), (None, 168))
    """
    from streamer import seasonal

    first, comma, second = text.partition(",")
    try:
        s2 = int(second) if comma else 0
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto, N or N,M (a second season), got {text!r}"
        ) from None
    s1 = season(first.strip())
    if s2 < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    if s2 and s1 is not None and (wrong := seasonal.check(s1, s2)):
        raise argparse.ArgumentTypeError(wrong)
    return s1, s2


def calendar_inputs(text: str) -> tuple[str, ...]:
    """``none`` -> (); ``hour,weekday`` -> those.

    >>> calendar_inputs("none"), calendar_inputs("hour, weekday")
    ((), ('hour', 'weekday'))
    """
    from streamer.calendar import check
    from streamer.errors import DataError

    text = text.strip().lower()
    if text in ("none", ""):
        return ()
    try:
        return check(names(text))
    except DataError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def levels(text: str) -> tuple[int, ...]:
    """``80,95`` -> (80, 95); ``none`` -> () (no intervals).

    >>> levels("95,80"), levels("none")
    ((80, 95), ())
    """
    if text.strip().lower() in ("none", ""):
        return ()
    try:
        levels = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected levels in percent such as 80,95 (or none), got {text!r}"
        ) from None
    if not all(0 < v < 100 for v in levels):
        raise argparse.ArgumentTypeError(f"levels are percents between 1 and 99, got {text}")
    return tuple(levels)


def version() -> str:
    try:
        return metadata.version("streamer")
    except metadata.PackageNotFoundError:  # (run from a checkout that was never installed)
        return "unknown"


def columns_of(args: argparse.Namespace) -> tuple[str, str, str]:
    """The long format's column names a command was given (:func:`columns`)."""
    return (args.id_col, args.time_col, args.target_col)
