from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from streamer.errors import ConfigError
from streamer.settings import Settings, to_env


def test_environment_round_trip_keeps_secrets_usable_but_unprinted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = Settings.model_validate(
        {
            "redis": {"password": "pw-123"},
            "kafka": {"sasl_password": "k-456"},
            "batch": {"max_size": 64},
        }
    )
    assert "pw-123" not in repr(s) and "k-456" not in str(s)
    env = to_env(s)
    assert env["STREAMER_REDIS__PASSWORD"] == "pw-123" and env["STREAMER_BATCH__MAX_SIZE"] == "64"
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    back = Settings()
    assert back.redis.password == SecretStr("pw-123") and back.batch.max_size == 64
    assert back.kafka.transactional_id == s.kafka.transactional_id


def test_kept_outputs_must_cover_a_batch() -> None:
    with pytest.raises(ValidationError, match="max_kept_outputs"):
        Settings.model_validate({"max_kept_outputs": 10, "batch": {"max_size": 64}})


def test_sasl_options_reach_the_kafka_clients() -> None:
    k = Settings.model_validate(
        {
            "kafka": {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_username": "u",
                "sasl_password": "p",
            }
        }
    ).kafka
    assert k.client_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }
    assert k.librdkafka_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "sasl_plaintext",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "u",
        "sasl.password": "p",
    }


def test_tls_files_reach_both_clients_and_a_bad_one_is_one_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    k = Settings.model_validate(
        {"kafka": {"security_protocol": "SSL", "ssl_cafile": str(ca)}}
    ).kafka
    assert k.librdkafka_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "ssl",
        "ssl.ca.location": str(ca),
    }
    with pytest.raises(ConfigError, match="cannot use the Kafka TLS files"):
        k.client_options()  # aiokafka's ssl context: the file is no PEM
    assert Settings().kafka.client == "aiokafka"
    assert Settings().kafka.session_timeout_s is None  # the broker's minimum, at least 3 s
