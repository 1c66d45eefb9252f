"""The Faust engine's settings and app configuration (its worker runs in the integration tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from streamer.errors import ConfigError
from streamer.faust import Streamer, faust_app, streamer_app
from streamer.settings import Settings


def settings(**values: object) -> Settings:
    return Settings.model_validate(values)


def test_the_default_engine_is_streamers_own() -> None:
    assert Settings().engine == "streamer"


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"processing_guarantee": "exactly_once"}, "at least once"),
        ({"kafka": {"client": "confluent"}}, "runs on aiokafka"),
    ],
)
def test_what_the_faust_engine_cannot_do_is_refused(values: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        settings(engine="faust", **values)


def test_a_streamer_in_a_users_app_refuses_exactly_once() -> None:
    s = settings(processing_guarantee="exactly_once")  # (valid for the default engine)
    with pytest.raises(ConfigError, match="at least once"):
        Streamer(faust_app(s), s)


def test_the_app_takes_streamers_kafka_settings() -> None:
    s = settings(
        app_id="shop",
        topics={"partitions": 8},
        kafka={
            "bootstrap_servers": "b1:9092,b2:9093",
            "session_timeout_s": 4.5,
            "auto_offset_reset": "latest",
            "producer_linger_ms": 20,
        },
    )
    app = faust_app(s, broker_commit_every=500)
    conf = app.conf
    assert conf.id == "shop"
    assert [str(u) for u in conf.broker] == ["kafka://b1:9092", "kafka://b2:9093"]
    assert conf.broker_session_timeout == 4.5
    assert conf.broker_heartbeat_interval == 0.5
    assert conf.consumer_auto_offset_reset == "latest"
    assert conf.producer_linger == 0.02
    assert conf.producer_acks == -1
    assert conf.topic_partitions == 8
    assert conf.broker_commit_every == 500  # the caller's own Faust settings
    assert not conf.web_enabled
    assert not Path(conf.datadir).resolve().is_relative_to(Path(os.getcwd()).resolve())
    assert conf.broker_credentials is None


def test_sasl_credentials_reach_faust() -> None:
    s = settings(
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_username": "ann",
            "sasl_password": "pw",
        }
    )
    creds = faust_app(s).conf.broker_credentials
    assert (creds.username, creds.password, creds.mechanism.value) == (
        "ann",
        "pw",
        "SCRAM-SHA-256",
    )


def test_the_ready_app_has_one_agent_on_the_events_topic() -> None:
    s = settings(topics={"events": "clicks"})
    app = streamer_app(s)
    (agent,) = app.agents.values()
    assert agent.name == "streamer"
    assert list(agent.channel.topics) == ["clicks"]
