"""One configuration, three ways: the TOML file, ``STREAMER_*`` variables and flags, in that order
of precedence, through the one settings class; unknown names are errors that say what was meant."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from streamer.config import config_path, read_config, unknown_variables
from streamer.errors import ConfigError
from streamer.ops.cli.options import settings_from
from streamer.ops.cli.parser import build_parser
from streamer.settings import Settings

CONFIG = """
app_id = "shop"
model_name = "sales"
model_path = "models/sales"

[kafka]
bootstrap_servers = "file-host:9092"

[topics]
events = "shop.events"

[batch]
max_size = 256
"""


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No STREAMER_* variable, and a working directory of the test's own."""
    import os

    for key in list(os.environ):
        if key.startswith("STREAMER_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_file_then_environment_then_flags(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "streamer.toml").write_text(CONFIG)
    s = settings_from(parse("worker"))  # ./streamer.toml, found in the working directory
    assert (s.app_id, s.model_name, s.kafka.bootstrap_servers) == (
        "shop",
        "sales",
        "file-host:9092",
    )
    assert s.batch.max_size == 256 and s.kafka.client == "aiokafka"  # (a default)
    assert s.model_path == clean_env / "models" / "sales"  # relative to the file
    # Renamed events: the dead letters follow; the window predictions follow the predictions.
    assert (s.topics.events, s.topics.dead_letter) == ("shop.events", "shop.events.dlq")
    assert s.topics.windows == "predictions.windows"

    monkeypatch.setenv("STREAMER_KAFKA__BOOTSTRAP_SERVERS", "env-host:9092")
    monkeypatch.setenv("STREAMER_BATCH__MAX_WAIT_S", "0.01")
    s = settings_from(parse("worker"))
    assert s.kafka.bootstrap_servers == "env-host:9092" and s.batch.max_size == 256
    assert s.batch.max_wait_s == 0.01

    s = settings_from(
        parse("worker", "--bootstrap-servers", "flag-host:9092", "--events-topic", "ev2")
    )
    assert s.kafka.bootstrap_servers == "flag-host:9092"
    assert (s.topics.events, s.topics.dead_letter) == ("ev2", "ev2.dlq")
    assert s.app_id == "shop"  # the rest still from the file


def test_config_flag_and_variable_name_the_file(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = clean_env / "conf" / "prod.toml"
    other.parent.mkdir()
    other.write_text('model_name = "prod"\n[redis]\nssl_ca_certs = "ca.pem"\n')
    (clean_env / "streamer.toml").write_text('model_name = "here"\n')
    assert settings_from(parse("state", "stats", "--config", str(other))).model_name == "prod"
    assert Settings.load(other).redis.ssl_ca_certs == other.parent / "ca.pem"
    monkeypatch.setenv("STREAMER_CONFIG", str(other))
    assert settings_from(parse("state", "stats")).model_name == "prod"
    monkeypatch.delenv("STREAMER_CONFIG")
    assert settings_from(parse("state", "stats")).model_name == "here"
    with pytest.raises(ConfigError, match="no configuration file at"):
        config_path(clean_env / "missing.toml")


def test_an_explicit_topic_name_is_kept() -> None:
    s = Settings.model_validate({"topics": {"events": "a", "dead_letter": "bad", "windows": "w"}})
    assert (s.topics.dead_letter, s.topics.windows) == ("bad", "w")
    assert Settings.model_validate({}).topics.dead_letter == "events.dlq"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('appid = "x"\n', "appid names no setting (did you mean app_id?)"),
        ('[kafka]\nbootstrap = "h:1"\n', "kafka.bootstrap names no setting (did you mean "),
        ('[kafka]\nbootstrap = "h:1"\n', "kafka.bootstrap_servers?)"),
        ('[kafak]\nclient = "confluent"\n', "kafak names no setting"),
        ('kafka = "h:1"\n', "kafka is a table ([kafka]), not a value"),
        ("model_name = [1\n", "is no valid TOML"),
    ],
)
def test_unknown_keys_in_the_file_say_what_was_meant(
    clean_env: Path, text: str, needle: str
) -> None:
    path = clean_env / "streamer.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_config(path)
    assert needle in str(err.value) and str(path) in str(err.value)


def test_a_bad_value_in_the_file_is_a_validation_error(clean_env: Path) -> None:
    (clean_env / "streamer.toml").write_text("[batch]\nmax_size = -1\n")
    with pytest.raises(ValueError, match="max_size"):
        Settings.load()


def test_unknown_variables_say_what_was_meant(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"STREAMER_APPID names no setting \(did you mean "):
        unknown_variables({"STREAMER_APPID": "x"})
    with pytest.raises(ConfigError, match="did you mean STREAMER_KAFKA__BOOTSTRAP_SERVERS"):
        unknown_variables({"STREAMER_KAFKA__BOOTSTRAP_SERVER": "x"})
    unknown_variables({"STREAMER_SERVICES_DIR": "/x", "STREAMER_CONFIG": "a.toml", "PATH": "/"})
    monkeypatch.setenv("STREAMER_MODELNAME", "x")
    with pytest.raises(ConfigError, match="did you mean STREAMER_MODEL_NAME"):
        Settings()


@pytest.mark.parametrize(
    ("setting", "value", "needle"),
    [
        ("redis", {"url": "localhost:6379"}, "expected redis://host:port"),
        ("redis", {"url": "http://x"}, "expected redis://host:port"),
        ("kafka", {"bootstrap_servers": "localhost"}, "expected host:port"),
        ("kafka", {"bootstrap_servers": "h:1,h2:x"}, "expected host:port"),
    ],
)
def test_malformed_addresses_are_refused_when_read(
    setting: str, value: dict[str, str], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        Settings.model_validate({setting: value})
    Settings.model_validate({"redis": {"url": "rediss://h:6380/1"}})
    Settings.model_validate({"kafka": {"bootstrap_servers": "a:9092, b:9093"}})
