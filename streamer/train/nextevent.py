"""Next-event models: a softmax over a categorical column's vocabulary for each entity's next event.

The data are events in long format: ``unique_id``, ``ds``, the predicted column (strings: a page, a
product, a log key...), other categorical columns and numeric features; ``y`` is not needed (and
not used). After every event the model gives the probability of each value of the predicted column
for the entity's *next* event; training is per-step cross-entropy against the value that came
next (teacher forcing, exactly as the stream steps), with early stopping on the last events of each
sequence and a refit on all of them.

Scoring (:func:`score`) ranks the value that actually came next among the prediction made before
it, for the held-out events of each entity: Recall@k, MRR@k and NDCG@k, next to three baselines
computed on the same split (the most popular values, the entity's last values, first-order Markov
transitions).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import Tensor

from streamer.errors import ConfigError, DataError
from streamer.model import ModelSpec, SequenceModel, nextevent
from streamer.model.vocab import OOV, Vocabulary, groups_for
from streamer.train.checks import values_crc
from streamer.train.data import check_events, format_ds
from streamer.train.problems import Problem, _pad, _split
from streamer.train.training import TrainConfig, TrainResult, _fit, refitted

__all__ = [
    "TokenSeries",
    "baselines",
    "check_events",
    "next_inputs",
    "offline_logits",
    "offline_served",
    "score",
    "split_tokens",
    "train_next",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

#: the cut-offs Recall, MRR and NDCG are reported at
CUTOFFS = (1, 5, 10, 20)


@dataclass(frozen=True)
class TokenSeries:
    """One entity's events: times, the categorical columns' values as text (``None``: missing)
    and the numeric features ``(T, F)``."""

    unique_id: str
    ds: list[str]
    values: dict[str, list[str | None]]
    features: F64

    def __len__(self) -> int:
        return len(self.ds)

    def head(self, n: int) -> TokenSeries:
        return TokenSeries(
            self.unique_id,
            self.ds[:n],
            {c: v[:n] for c, v in self.values.items()},
            self.features[:n],
        )


def split_tokens(
    df: pd.DataFrame, categorical: Sequence[str], features: Sequence[str]
) -> list[TokenSeries]:
    out = []
    for uid, g in df.groupby("unique_id", sort=True):
        out.append(
            TokenSeries(
                str(uid),
                [format_ds(t) for t in g["ds"]],
                {c: g[c].tolist() for c in categorical},
                g[list(features)].to_numpy(np.float64).reshape(len(g), len(features)),
            )
        )
    return out


def next_inputs(s: TokenSeries, spec: ModelSpec) -> F32:
    """Raw model inputs ``(T, raw I)`` of one series: the scaled features, then each
    categorical column's ids, as the stream builds them."""
    x = np.empty((len(s), spec.raw_input_size), np.float32)
    nf = len(spec.features)
    if nf:
        fm = np.asarray(spec.feature_mean or [0.0] * nf)
        fs = np.asarray(spec.feature_std or [1.0] * nf)
        x[:, :nf] = (s.features - fm) / fs
    for j, (col, vocab) in enumerate(spec.vocabulary.items()):
        x[:, nf + j] = vocab.ids(s.values[col])
    return x


def _targets(s: TokenSeries, spec: ModelSpec) -> I64:
    """The id of the value that came next after each event (-1 after the last: no target)."""
    ids = spec.vocabulary[spec.next or ""].ids(s.values[spec.next or ""])
    return np.concatenate([ids[1:], [-1]])


def next_problem(
    model: SequenceModel,
    series: list[TokenSeries],
    cfg: TrainConfig,
    rng: np.random.Generator,
    dev: torch.device,
) -> Problem:
    """Per-step cross-entropy against the next event's id, over every target of a sequence; a
    share of the entities (``cfg.val_fraction``) validates (early stopping). (Holding out the last
    events of every sequence instead would keep what ends a sequence, a session's close, out of
    training altogether.)"""
    spec = model.spec
    xs = [next_inputs(s, spec) for s in series]
    ys = [_targets(s, spec) for s in series]
    ce = torch.nn.CrossEntropyLoss(reduction="none", ignore_index=-1)

    def loss(idx: Sequence[int], train: bool) -> tuple[Tensor, float]:
        x = _pad([xs[i] for i in idx], torch.float32, dev)
        y = _pad([ys[i] + 1 for i in idx], torch.int64, dev) - 1  # padding: -1, no target
        out, _ = model(x)  # (B, T, V)
        per = ce(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        return per.sum(), float((y >= 0).sum())

    train_idx, val_idx = _split(len(series), cfg, rng)
    return Problem(len(series), train_idx, val_idx, loss)


@torch.no_grad()
def offline_logits(model: SequenceModel, s: TokenSeries) -> F32:
    """The model over a whole series (the fused kernel): after each event, the logits of the next
    one's ids ``(T, V)``; what the stream must reproduce event by event."""
    model.eval()
    dev = next(model.parameters()).device
    raw, _ = model(torch.from_numpy(next_inputs(s, model.spec))[None].to(dev))
    logits: F32 = raw[0].float().cpu().numpy()
    return logits


@torch.no_grad()
def offline_served(model: SequenceModel, s: TokenSeries) -> tuple[F64, F32, F32, F64]:
    """A next-event model over a whole series with the fused kernel, as the stream serves it:
    each event's values (the ids of the top values, their probabilities, the surprise and the
    rank: :func:`streamer.model.nextevent.advance`), the final h and c, and the components the
    entity's state then holds."""
    model.eval()
    spec = model.spec
    x = next_inputs(s, spec)
    dev = next(model.parameters()).device
    out, (h, c) = model.hidden(torch.from_numpy(x)[None].to(dev))  # (1, T, H)
    ids = torch.from_numpy(x[:, spec.categorical.index(spec.next or "") - len(spec.categorical)])
    # the prediction before event t is the one made after event t - 1 (none before the first)
    before = torch.cat([torch.zeros_like(out[0, :1]), out[0, :-1]])
    raw = model.next_served(out[0], before, ids.long().to(dev)).cpu().numpy().astype(np.float64)
    comp = np.zeros((1, nextevent.components(spec.served_top_k)))
    rows = []
    actual = ids.numpy().astype(np.int64)
    for t in range(len(x)):
        values, comp = nextevent.advance(raw[t : t + 1], actual[t : t + 1], comp, np.array([t > 0]))
        rows.append(values[0])
    return np.stack(rows), h[:, 0].cpu().numpy(), c[:, 0].cpu().numpy(), comp[0]


def _ranks(logits: F32, actual: I64) -> I64:
    """Each actual id's rank (1: the most likely) among the known values of the prediction made
    before it (out-of-vocabulary is never a candidate: an actual that is ranks 0, a miss)."""
    known = logits[:, 1:]
    mine = np.take_along_axis(logits, actual[:, None], 1)
    rank = 1 + (known > mine).sum(1)
    return np.where(actual == OOV, 0, rank)


def metrics(ranks: I64, cutoffs: Sequence[int] = CUTOFFS) -> dict[str, float]:
    """Recall@k, MRR@k and NDCG@k of ranks (0: a miss), for each cut-off."""
    r = np.asarray(ranks)
    out: dict[str, float] = {"events": float(len(r))}
    hit_any = r > 0
    for k in cutoffs:
        hit = hit_any & (r <= k)
        safe = np.where(hit, r, 1)
        out[f"recall@{k}"] = float(hit.mean()) if len(r) else math.nan
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / safe, 0.0).mean()) if len(r) else math.nan
        out[f"ndcg@{k}"] = (
            float(np.where(hit, 1.0 / np.log2(safe + 1), 0.0).mean()) if len(r) else math.nan
        )
    return out


def held_out(series: Sequence[TokenSeries], fraction: float) -> list[int]:
    """Where each series' held-out events start: its last ``fraction`` (at least one event when
    it has two or more)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"the held-out fraction is between 0 and 1, not {fraction}")
    return [len(s) - max(1 if len(s) > 1 else 0, round(len(s) * fraction)) for s in series]


def score(
    model: SequenceModel, series: Sequence[TokenSeries], starts: Sequence[int]
) -> dict[str, float]:
    """The model's metrics on each series' events from ``starts[i]`` on (the prediction before
    each one, made after all earlier events of the entity)."""
    ranks = [np.zeros(0, np.int64)]
    vocab = model.spec.vocabulary[model.spec.next or ""]
    for s, a in zip(series, starts, strict=True):
        if a < 1 or a >= len(s):
            continue
        logits = offline_logits(model, s.head(len(s) - 1))  # (T-1, V): before events 1..T-1
        actual = vocab.ids(s.values[model.spec.next or ""][a:])
        ranks.append(_ranks(logits[a - 1 :], actual))
    return metrics(np.concatenate(ranks))


def baselines(
    series: Sequence[TokenSeries], starts: Sequence[int], column: str, vocab: Vocabulary
) -> dict[str, dict[str, float]]:
    """The baselines' metrics on the same held-out events, fitted to the events before them:
    the most popular values, the entity's last distinct values (most recent first) and
    first-order Markov transitions from the entity's previous value (popularity breaks ties and
    fills the list)."""
    max_k = max(CUTOFFS)
    popular_counts: Counter[int] = Counter()
    moves: defaultdict[int, Counter[int]] = defaultdict(Counter)
    for s, a in zip(series, starts, strict=True):
        ids = vocab.ids(s.values[column][:a]).tolist()
        popular_counts.update(i for i in ids if i != OOV)
        for p, q in itertools.pairwise(ids):
            if q != OOV:
                moves[p][q] += 1
    popular = [i for i, _ in popular_counts.most_common(max_k)]
    rank_of = {i: r for r, i in enumerate(popular, start=1)}

    def rank(lst: list[int], actual: int) -> int:
        if actual == OOV:
            return 0
        try:
            return lst.index(actual) + 1
        except ValueError:
            return 0

    def filled(first: list[int]) -> list[int]:
        seen = set(first)
        return (first + [i for i in popular if i not in seen])[:max_k]

    out: dict[str, list[int]] = {"popular": [], "last": [], "markov": []}
    for s, a in zip(series, starts, strict=True):
        ids = vocab.ids(s.values[column]).tolist()
        for t in range(max(a, 1), len(ids)):
            actual = ids[t]
            out["popular"].append(rank_of.get(actual, 0) if actual != OOV else 0)
            recent: list[int] = []
            for i in reversed(ids[:t]):
                if i != OOV and i not in recent:
                    recent.append(i)
                    if len(recent) == max_k:
                        break
            out["last"].append(rank(recent, actual))
            nxt = [i for i, _ in moves.get(ids[t - 1], Counter()).most_common(max_k)]
            out["markov"].append(rank(filled(nxt), actual))
    return {name: metrics(np.asarray(r, np.int64)) for name, r in out.items()}


def train_next(
    df: pd.DataFrame,
    cfg: TrainConfig,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> TrainResult:
    """Train a next-event model (``cfg.next`` names the predicted column) on a long frame
    (``cfg`` resolved: :func:`streamer.train.config.resolve`)."""
    if (cfg.members or 1) > 1 or cfg.window or cfg.season or cfg.season2:
        raise ConfigError(
            "a next-event model is a single step model (no --members, --window, --season)"
        )
    target = cfg.next
    if target is None:
        raise ConfigError("a next-event model needs the column it predicts (--next)")
    categorical = [target, *(c for c in cfg.categorical if c != target)]
    data, feats = check_events(df, categorical)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    series = [s for s in split_tokens(data, categorical, feats) if len(s) >= 2]
    if cfg.holdout_fraction:
        series = [
            s.head(a) for s, a in zip(series, held_out(series, cfg.holdout_fraction), strict=True)
        ]
        series = [s for s in series if len(s) >= 2]
    elif cfg.holdout:
        series = [s.head(len(s) - cfg.holdout) for s in series if len(s) - cfg.holdout >= 2]
    if not series:
        raise DataError("no entity has two events to learn a next event from")
    vocabs = [
        Vocabulary((), cfg.hash_buckets)
        if cfg.hash_buckets and c != target
        else Vocabulary.fit(
            (v for s in series for v in s.values[c] if v is not None),
            cfg.max_vocabulary,
            cfg.min_count,
        )
        for c in categorical
    ]
    fvals = np.concatenate([s.features for s in series]) if feats else np.zeros((0, 0))
    spec = ModelSpec(
        cell=cfg.cell,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        features=tuple(feats),
        feature_mean=tuple(float(v) for v in fvals.mean(0)) if feats else (),
        feature_std=tuple(float(max(v, 1e-8)) for v in fvals.std(0)) if feats else (),
        dropout=cfg.dropout,
        task="next",
        scaling="none",
        categorical=tuple(categorical),
        vocabularies=tuple(v.values for v in vocabs),
        embedding=cfg.embedding,
        next=target,
        top_k=cfg.top_k,
        hash_buckets=cfg.hash_buckets,
        groups=groups_for(len(vocabs[0])) if cfg.groups is None else cfg.groups,
        groups_searched=cfg.groups_searched,
        groups_exact=cfg.groups_exact,
    )
    dev = torch.device(cfg.device)
    model = SequenceModel(spec).to(dev)
    problem = next_problem(model, series, cfg, rng, dev)
    best, best_epoch, epoch, history = _fit(model, problem, cfg, rng, on_epoch)
    model.cpu()
    summary: dict[str, Any] = {
        "config": asdict(cfg),
        "entities": len(series),
        "rows": int(sum(len(s) for s in series)),
        "features": feats,
        "categorical": categorical,
        "vocabulary": {c: len(v) - 1 for c, v in zip(categorical, vocabs, strict=True)},
        "start": str(data["ds"].min()),
        "end": str(data["ds"].max()),
        "epochs_run": epoch,
        "best_val_loss": best if math.isfinite(best) else None,
        "final_train_loss": history[-1][0] if history else None,
    }
    if problem.val_idx:  # every event after the first of the validation entities
        held = [series[i] for i in problem.val_idx]
        summary["validation"] = score(model, held, [1] * len(held))
    span = token_span(series, spec)
    if cfg.refit and best_epoch:
        again = replace(cfg, epochs=best_epoch, val_fraction=0.0, refit=False)
        full = train_next(df, again, on_epoch)
        full.summary.update(refitted(cfg, summary, best_epoch, epoch))
        full.summary["validation"] = summary.get("validation")
        return replace(full, chosen=model)
    return TrainResult(model, summary, span, model)


def token_span(series: Sequence[TokenSeries], spec: ModelSpec) -> pd.DataFrame:
    """What a next-event model was trained on, per entity, as
    :func:`streamer.train.checks.training_span` has it (the CRC32 of its predicted column's
    ids), for ``streamer evaluate``'s check that held-out events were not trained on."""
    vocab = spec.vocabulary[spec.next or ""]
    return pd.DataFrame(
        {
            "unique_id": [s.unique_id for s in series],
            "last_ds": [s.ds[-1] for s in series],
            "points": np.array([len(s) for s in series], np.int64),
            "crc32": np.array(
                [values_crc(vocab.ids(s.values[spec.next or ""])) for s in series], np.int64
            ),
        }
    )
