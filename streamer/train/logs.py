"""Synthetic log-key sessions with injected anomalies: data for next-event models' surprise.

A session (an entity) is a request through a small storage service, written as log keys: it opens,
authenticates (an admin's session also writes an audit record before it closes), then reads and
writes blocks (every write is flushed before the session closes, and replicated when the write was
large), and closes. Normal sessions follow these rules with random choices; the rules reach back
many events (an audit owed since the start, a flush owed since a write), which is what a recurrent
state is for.

The test sessions are normal ones of which a share get one anomaly each, of three kinds, as
DeepLog's evaluation injects them: **order** (two adjacent keys swapped), **missing** (a step left
out: the authentication, a flush, or the audit) and **unknown** (a key the training sessions never
had). The column ``anomaly`` marks where the anomaly was made (1; else 0); every injected session breaks
the rules (:func:`normal`), and a session counts as anomalous when it has a mark.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["KINDS", "log_sessions", "normal"]

KINDS = ("order", "missing", "unknown")
UNKNOWN_KEYS = ("disk_error", "lease_expired", "checksum_mismatch")


def _session(rng: np.random.Generator) -> list[str]:
    admin = rng.random() < 0.2
    keys = ["open", "auth_admin" if admin else "auth_user"]
    unflushed = False
    for _ in range(int(rng.integers(2, 9))):
        if rng.random() < 0.55:
            keys.append("read")
            if rng.random() < 0.3:
                keys.append("cache_hit")
        else:
            large = rng.random() < 0.35
            keys.append("write_large" if large else "write")
            if large:
                keys.append("replicate")
            unflushed = True
            if rng.random() < 0.4:
                keys.append("flush")
                unflushed = False
    if unflushed:
        keys.append("flush")
    if admin:
        keys.append("audit")
    keys.append("close")
    return keys


def normal(keys: list[str]) -> bool:
    """Whether a session follows the rules (what :func:`_session` writes, and nothing else)."""
    if len(keys) < 3 or keys[0] != "open" or keys[-1] != "close":
        return False
    admin = keys[1] == "auth_admin"
    if keys[1] not in ("auth_user", "auth_admin") or (keys[-2] == "audit") != admin:
        return False
    body = keys[2 : -2 if admin else -1]
    unflushed = False
    for i, k in enumerate(body):
        before = body[i - 1] if i else ""
        if k in ("write", "write_large"):
            unflushed = True
        elif k == "flush":
            if not unflushed:
                return False
            unflushed = False
        elif k == "replicate":
            if before != "write_large":
                return False
        elif k == "cache_hit":
            if before != "read":
                return False
        elif k != "read":
            return False
        if before == "write_large" and k != "replicate":
            return False
    return not unflushed and (not body or body[-1] != "write_large")


def _inject(keys: list[str], kind: str, rng: np.random.Generator) -> tuple[list[str], int]:
    """The session with one anomaly of ``kind`` (one that breaks the rules: a swap or a missing
    step that leaves a normal session is drawn again), and the position where it was made."""
    for _ in range(100):
        hurt, at = _one(keys, kind, rng)
        if not normal(hurt):
            return hurt, at
    raise RuntimeError(f"no {kind} anomaly breaks this session: {keys}")


def _one(keys: list[str], kind: str, rng: np.random.Generator) -> tuple[list[str], int]:
    keys = list(keys)
    if kind == "unknown":
        at = int(rng.integers(1, len(keys)))
        keys.insert(at, str(rng.choice(UNKNOWN_KEYS)))
        return keys, at
    if kind == "missing":
        owed = [i for i, k in enumerate(keys) if k in ("auth_user", "auth_admin", "flush", "audit")]
        at = int(rng.choice(owed))
        del keys[at]
        return keys, at  # (the event that came instead of the missing one)
    # order: two adjacent different keys swapped, not the first event
    pairs = [i for i in range(1, len(keys) - 1) if keys[i] != keys[i + 1]]
    at = int(rng.choice(pairs))
    keys[at], keys[at + 1] = keys[at + 1], keys[at]
    return keys, at


def log_sessions(
    sessions: int, anomalous: float = 0.0, seed: int = 0, prefix: str = "s"
) -> pd.DataFrame:
    """``sessions`` sessions as events (``unique_id`` the session, ``ds``, ``key``, and
    ``anomaly`` 0/1 when ``anomalous`` > 0: that share of them gets one anomaly each, the kinds in
    turn)."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-03-01")
    rows = []
    hurt = set(rng.choice(sessions, round(sessions * anomalous), replace=False).tolist())
    n_hurt = 0
    for s in range(sessions):
        keys, at = _session(rng), -1
        if s in hurt:
            keys, at = _inject(keys, KINDS[n_hurt % len(KINDS)], rng)
            n_hurt += 1
        t0 = start + pd.Timedelta(seconds=int(rng.integers(0, 86_400 * 7)))
        gaps = np.cumsum(rng.integers(1, 2_000, len(keys)))  # milliseconds
        for i, key in enumerate(keys):
            row = {
                "unique_id": f"{prefix}{s:05d}",
                "ds": t0 + pd.Timedelta(milliseconds=int(gaps[i])),
                "key": key,
            }
            if anomalous:
                row["anomaly"] = int(i == at)
            rows.append(row)
    return pd.DataFrame(rows)
