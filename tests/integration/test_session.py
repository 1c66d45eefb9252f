"""The consumer session timeout streamer picks by itself: the broker's minimum, at least 3 s."""

from __future__ import annotations

import pytest

from streamer.kafka.clients import FALLBACK_SESSION_S, MIN_AUTO_SESSION_S, session_timeout_s
from streamer.settings import Settings

pytestmark = pytest.mark.integration


async def test_the_session_timeout_follows_the_brokers_minimum(services: dict[str, str]) -> None:
    def settings(bootstrap: str, **kafka: object) -> Settings:
        return Settings.model_validate({"kafka": {"bootstrap_servers": bootstrap, **kafka}})

    # The test broker allows sessions from 1 s (group.min.session.timeout.ms=1000): the floor.
    assert await session_timeout_s(settings(services["bootstrap"])) == MIN_AUTO_SESSION_S
    # A setting wins, without asking the broker.
    assert await session_timeout_s(settings("127.0.0.1:1", session_timeout_s=7.5)) == 7.5
    # A broker that cannot be asked: the fallback (the consumer then waits for it as ever).
    assert await session_timeout_s(settings("127.0.0.1:1")) == FALLBACK_SESSION_S
