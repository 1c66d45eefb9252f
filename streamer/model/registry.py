"""The model registry: artifacts published to Redis, one of them active per model name.

Keys (``redis-cli`` readable; ``NAME`` is the model name of the state keys, in braces: a Redis
Cluster hash tag, so one model's keys share a slot and a publish is one transaction there too)::

    streamer-models:{NAME}:versions        hash   version -> JSON: when published, from where, spec
    streamer-models:{NAME}:artifact:V      hash   spec -> spec.json bytes, weights -> safetensors
    streamer-models:{NAME}:active          string the active version
    streamer-models:{NAME}:activations     list   JSON {version, previous, at_ms}, newest first

Workers poll the active key (:attr:`streamer.settings.Settings.registry_poll_s`) and switch to a
newly activated version at their next batch boundary; a rollback is activating the old version
again. Artifacts are checked (content hash, weights against spec) when published and when loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from streamer.errors import ArtifactError, StoreUnavailable
from streamer.model.artifact import SPEC, WEIGHTS, Artifact, artifact_from_bytes, load_artifact
from streamer.state import classify_redis_error
from streamer.state.codec import now_ms

__all__ = ["Registry", "VersionInfo"]


@dataclass(frozen=True)
class VersionInfo:
    version: str
    published_ms: int
    source: str
    spec: dict[str, Any]
    training: dict[str, Any]
    active: bool = False


_PUBLISH_LUA = """
redis.call('HSET', KEYS[1], 'spec', ARGV[1], 'weights', ARGV[2])
return redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4])
"""


class Registry:
    """Published model versions of one model name, in Redis."""

    def __init__(self, client: aioredis.Redis, name: str):
        self.redis = client
        self.name = name
        self._prefix = f"streamer-models:{{{name}}}:"

    def _key(self, what: str) -> str:
        return self._prefix + what

    async def _run(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailable(f"cannot reach the model registry in Redis: {exc}") from None
        except (RedisError, RedisClusterException) as exc:  # e.g. a cluster read as one Redis
            raise classify_redis_error(exc, "registry") from None

    async def publish(self, path: Path) -> str:
        """Store the artifact directory ``path``; returns its version. Publishing the same
        artifact again changes nothing."""
        art = load_artifact(path)  # checked before it is offered to workers
        spec_json, weights = (path / SPEC).read_bytes(), (path / WEIGHTS).read_bytes()
        info = {
            "published_ms": now_ms(),
            "source": str(path.resolve()),
            "spec": art.spec.to_dict(),
            "training": art.training,
        }
        # One script, atomic in a Redis and in a cluster (the keys share a hash tag); not a
        # MULTI pipeline: redis-py's asyncio cluster client runs those on a thread of its own.
        await self._run(
            self.redis.eval(
                _PUBLISH_LUA,
                2,
                self._key(f"artifact:{art.version}"),
                self._key("versions"),
                spec_json,
                weights,
                art.version,
                json.dumps(info),
            )
        )
        return art.version

    async def versions(self) -> list[VersionInfo]:
        """Every published version, oldest first."""
        raw, active = await self._run(self._versions_and_active())
        out = []
        for v, doc in raw.items():
            d = json.loads(doc)
            version = v.decode()
            out.append(
                VersionInfo(
                    version,
                    int(d["published_ms"]),
                    str(d.get("source", "")),
                    dict(d.get("spec", {})),
                    dict(d.get("training", {})),
                    version == active,
                )
            )
        return sorted(out, key=lambda i: (i.published_ms, i.version))

    async def _versions_and_active(self) -> tuple[dict[bytes, bytes], str | None]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self._key("versions"))
        pipe.get(self._key("active"))
        raw, active = await pipe.execute()
        return raw, active.decode() if active else None

    async def show(self, version: str) -> VersionInfo:
        for info in await self.versions():
            if info.version == version:
                return info
        raise ArtifactError(f"model {self.name!r} has no published version {version!r}")

    async def activate(self, version: str) -> str | None:
        """Make ``version`` the one workers serve; returns the version it replaces."""
        exists = await self._run(self.redis.hexists(self._key("versions"), version))
        if not exists:
            raise ArtifactError(
                f"model {self.name!r} has no published version {version!r} "
                "(streamer model publish DIR first; streamer model list shows what there is)"
            )
        previous = await self._run(self.redis.set(self._key("active"), version, get=True))
        before = previous.decode() if previous else None
        entry = json.dumps({"version": version, "previous": before, "at_ms": now_ms()})
        await self._run(self.redis.lpush(self._key("activations"), entry))
        return before

    async def active(self) -> str | None:
        """The active version, if any."""
        v = await self._run(self.redis.get(self._key("active")))
        return v.decode() if v else None

    async def activations(self, limit: int = 20) -> list[dict[str, Any]]:
        raw = await self._run(self.redis.lrange(self._key("activations"), 0, limit - 1))
        return [json.loads(r) for r in raw]

    async def load(self, version: str, device: torch.device | str = "cpu") -> Artifact:
        """The published artifact ``version``, checked as :func:`load_artifact` checks a
        directory."""
        got = await self._run(self.redis.hmget(self._key(f"artifact:{version}"), "spec", "weights"))
        spec_json, weights = got
        if spec_json is None or weights is None:
            raise ArtifactError(f"model {self.name!r} has no published version {version!r}")
        return artifact_from_bytes(spec_json, weights, device, f"registry {self.name}/{version}")

    async def aclose(self) -> None:
        await self.redis.aclose()
