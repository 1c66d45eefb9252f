"""Next-event models: vocabularies, the spec, the embedded inputs, training and scoring."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from streamer.errors import ConfigError
from streamer.model import ModelSpec, SequenceModel, nexthead
from streamer.model.nexthead import top_k
from streamer.model.vocab import OOV, Vocabulary
from streamer.schemas import Event
from streamer.train import nextevent as ne
from streamer.train.training import TrainConfig, train


def next_model(
    vocab: int = 12,
    k: int = 4,
    features: tuple[str, ...] = (),
    seed: int = 3,
    cell: str = "lstm",
    hash_buckets: int = 0,
    groups: int = 0,
    searched: int = 4,
    exact: bool = False,
) -> SequenceModel:
    """(``hash_buckets``: ``tag`` hashed instead of a vocabulary of ``a`` and ``b``; ``groups``:
    a two-level softmax, ``searched`` of its groups searched.)"""
    torch.manual_seed(seed)
    spec = ModelSpec(
        cell=cell,
        hidden_size=8,
        num_layers=2,
        features=features,
        feature_mean=tuple(0.5 for _ in features),
        feature_std=tuple(2.0 for _ in features),
        task="next",
        scaling="none",
        categorical=("key", "tag"),
        vocabularies=(tuple(f"k{i}" for i in range(vocab)), () if hash_buckets else ("a", "b")),
        embedding=5,
        next="key",
        top_k=k,
        hash_buckets=hash_buckets,
        groups=groups,
        groups_searched=searched,
        groups_exact=exact,
    )
    model = SequenceModel(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model.eval()


def test_a_vocabulary_keeps_the_most_frequent_values_and_maps_the_rest_to_oov() -> None:
    v = Vocabulary.fit(["b", "a", "b", "c", "b", "a", "d"], max_size=2)
    assert v.values == ("b", "a") and len(v) == 3
    assert v.ids(["a", "b", "c", None, 7, "b"]).tolist() == [2, 1, OOV, OOV, OOV, 1]
    assert v.value(1) == "b" and v.value(0) is None and v.value(3) is None
    assert Vocabulary.fit(["x", "y", "y"], min_count=2).values == ("y",)
    with pytest.raises(ConfigError):
        Vocabulary(["a", "a"])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"next": "nope"}, "must be categorical"),
        ({"next": None}, "names the column"),
        ({"top_k": 0}, "top_k"),
        ({"vocabularies": (("a",),)}, "vocabulary"),
        ({"categorical": ("key", "y")}, "no feature"),
        ({"levels": (80,), "interval_lo": ((0.0,),), "interval_hi": ((0.0,),)}, "intervals"),
    ],
)
def test_bad_next_specs_are_refused(kwargs: dict, needle: str) -> None:  # type: ignore[type-arg]
    base = next_model().spec.to_dict()
    spec = {**base}
    with pytest.raises(ConfigError, match=needle):
        ModelSpec(**{**ModelSpec.from_dict(spec).__dict__, **kwargs})


def test_the_spec_round_trips_and_older_specs_are_unchanged() -> None:
    spec = next_model().spec
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    for kind in (next_model(groups=3), next_model(groups=3, exact=True)):
        assert ModelSpec.from_dict(kind.spec.to_dict()) == kind.spec
    assert "groups_exact" not in next_model(groups=3).spec.to_dict()  # (as written before it)
    plain = ModelSpec().to_dict()
    assert not {"categorical", "vocabularies", "embedding", "next", "top_k"} & set(plain)
    assert spec.raw_input_size == 2 and spec.input_size == 10 and spec.outputs == 13


@pytest.mark.parametrize("groups", [0, 3])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_stepping_equals_the_sequence_and_the_previous_logit_is_the_last_predictions(
    cell: str, groups: int
) -> None:
    model = next_model(cell=cell, groups=groups, searched=2)
    rng = np.random.default_rng(0)
    x = torch.tensor(
        np.stack([rng.integers(0, 13, 9), rng.integers(0, 3, 9)], 1), dtype=torch.float32
    )
    with torch.no_grad():
        hidden, _ = model.hidden(x[None])  # (1, T, H)
        logits = model.logits(hidden[0])  # (T, V)
        state = model.rnn.zero_state(1)
        lse = torch.tensor(0.0)
        for t in range(len(x)):
            served, state = model.step(x[t : t + 1], state)
            before = hidden[0, t - 1 : t] if t else torch.zeros_like(hidden[0, :1])
            want = model.next_served(hidden[0, t : t + 1], before, x[t : t + 1, 0].long())
            torch.testing.assert_close(served, want, atol=1e-5, rtol=1e-5)
            if t:  # the previous logit: the last prediction's, of this event's value
                want_p = torch.log_softmax(logits[t - 1], 0)[int(x[t, 0])]
                torch.testing.assert_close(served[0, -1] - lse, want_p, atol=1e-5, rtol=1e-5)
            lse = served[0, -2]  # (a two-level softmax's: 0)


@pytest.mark.parametrize("groups", [0, 3, 6])
def test_served_outputs_are_the_top_known_values_and_their_probabilities(groups: int) -> None:
    """Top values as the full softmax has them (a two-level softmax searching all its groups
    too), their probabilities, and log-probabilities that sum to one over the vocabulary."""
    model = next_model(k=4, groups=groups, searched=6)
    out, before, ids = torch.randn(7, 8), torch.randn(7, 8), torch.randint(0, 13, (7,))
    with torch.no_grad():
        served = model.next_served(out, before, ids)
        logits, earlier = model.logits(out), model.logits(before)
    assert served.shape == (7, 10) and model.serve(served) is served
    probs = torch.softmax(logits, -1)
    if groups:
        torch.testing.assert_close(logits.exp().sum(-1), torch.ones(7))
        assert (served[:, 8] == 0).all()
    for r in range(7):
        top = served[r, :4].long()
        assert top.tolist() == (torch.topk(probs[r, 1:], 4).indices + 1).tolist()
        assert OOV not in top.tolist()
        torch.testing.assert_close(served[r, 4:8], probs[r, top])
        torch.testing.assert_close(served[r, 8], torch.logsumexp(logits[r], 0))
        # the logit the prediction made from `before` gave this event's value
        log_p = served[r, 9] - torch.logsumexp(earlier[r], 0)
        torch.testing.assert_close(log_p, torch.log_softmax(earlier[r], 0)[ids[r]])


def test_a_two_level_softmax_searches_its_most_likely_groups_only() -> None:
    """With fewer groups searched than it has, a prediction names the most likely values of
    its most likely groups, at their exact probabilities."""
    model = next_model(vocab=29, k=4, groups=6, searched=2)  # 30 ids, groups of 5
    out = torch.randn(50, 8)
    with torch.no_grad():
        served = model.next_served(out, out, torch.zeros(50, dtype=torch.long))
        assert model.group_head is not None
        group = torch.softmax(model.group_head(out), -1)
        probs = model.logits(out).exp()
    best_two = torch.topk(group, 2).indices  # (50, 2)
    for r in range(50):
        top = served[r, :4].long()
        assert set((top // 5).tolist()) <= set(best_two[r].tolist())
        pool = torch.cat([torch.arange(g * 5, g * 5 + 5) for g in best_two[r].tolist()])
        pool = pool[pool != OOV]
        assert top.tolist() == pool[torch.topk(probs[r, pool], 4).indices].tolist()
        torch.testing.assert_close(served[r, 4:8], probs[r, top])


@pytest.mark.parametrize(("groups", "searched"), [(8, 1), (8, 2), (3, 1), (29, 1)])
def test_an_exact_search_names_the_model_s_own_top_values(groups: int, searched: int) -> None:
    """With ``groups_exact`` a prediction whose top values could lie beyond its searched groups
    ranks the whole vocabulary: the full softmax's top k, whatever the search starts with (flat
    and peaked predictions both), in batches of any size."""
    model = next_model(vocab=59, k=6, groups=groups, searched=searched, exact=True)
    out = torch.cat([torch.randn(300, 8) * 0.3, torch.randn(300, 8) * 4])  # flat, then peaked
    ids = torch.randint(0, 60, (600,))
    with torch.no_grad():
        served = model.next_served(out, out.flip(0), ids)
        probs = model.logits(out).exp()
        plain = replace(model.spec, groups_exact=False)
        searched_only = next_model(vocab=59, k=6, groups=groups, searched=searched)
        assert searched_only.spec == plain
        first = searched_only.next_served(out, out.flip(0), ids)
    want = torch.topk(probs[:, 1:], 6)
    assert served[:, :6].long().tolist() == (want.indices + 1).tolist()
    torch.testing.assert_close(served[:, 6:12], want.values)
    torch.testing.assert_close(served[:, 12:], first[:, 12:])  # (the surprise's part: the same)
    if searched < groups // 2:  # (the plain search misses some, else this tests nothing)
        assert (first[:, :6] != served[:, :6]).any()
    with torch.no_grad():  # row by row: the same as in one batch
        each = torch.cat(
            [
                model.next_served(out[i : i + 1], out.flip(0)[i : i + 1], ids[i : i + 1])
                for i in range(0, 600, 37)
            ]
        )
    torch.testing.assert_close(each, served[::37])


@pytest.mark.parametrize(("vocab", "k"), [(6, 4), (6, 5), (10, 7), (13, 9)])
def test_a_search_of_few_groups_still_names_k_known_values(vocab: int, k: int) -> None:
    """However few groups are searched, and whichever they are (the short last one, the one with
    out-of-vocabulary), a prediction names k values of the vocabulary, each with a probability."""
    model = next_model(vocab=vocab, k=k, groups=3, searched=1)
    with torch.no_grad():
        served = model.next_served(
            torch.randn(200, 8) * 3, torch.randn(200, 8), torch.zeros(200).long()
        )
    ids, probs = served[:, :k], served[:, k : 2 * k]
    assert ((ids >= 1) & (ids <= vocab)).all() and (probs > 0).all()
    assert all(len(set(row.tolist())) == k for row in ids)


@pytest.mark.parametrize("groups", [0, 100])
def test_a_large_vocabulary_is_served_in_chunks_as_in_one_piece(groups: int) -> None:
    """On a CPU the logits of a large vocabulary are reduced a few rows at a time: the same
    outputs as the whole batch's at once."""
    model = next_model(vocab=30_000, k=10, groups=groups)
    x = torch.stack([torch.randint(0, 30_001, (3000,)), torch.randint(0, 3, (3000,))], 1).float()
    state = model.rnn.zero_state(3000)
    with torch.no_grad():
        served, _ = model.step(x, state)
        out, _ = model.rnn.step(model._embedded(x), state)
        each = nexthead.grouped if groups else nexthead.flat
        whole = each(model, out, state[0][-1], x[:, 0].long())
    torch.testing.assert_close(served, whole)


def test_the_gpu_s_way_to_the_searched_logits_is_the_cpu_s() -> None:
    """A GPU makes the whole head and gathers the pairs' groups; a CPU makes only theirs, one
    product per group: the same logits (both run here, on the CPU)."""
    model = next_model(vocab=27, k=4, groups=6)  # 28 ids: groups of 5, the last of 3
    both = torch.randn(40, 8)
    rows, which = torch.randint(0, 40, (90,)), torch.randint(0, 6, (90,))
    with torch.no_grad():
        per_group = nexthead.within(model, both, rows, which, whole=False)
        whole = nexthead.within(model, both, rows, which, whole=True)
    torch.testing.assert_close(per_group, whole)
    last = whole[which == 5]
    assert len(last) and torch.isinf(last[:, 3:]).all() and torch.isfinite(last[:, :3]).all()


@pytest.mark.parametrize("width", [5, 41, 100, 203, 400, 639, 641, 2000])
def test_the_two_step_top_k_is_torch_s(width: int) -> None:
    x = torch.randn(64, width)
    x[:, 3] = -torch.inf
    best, at = top_k(x, 10 if width > 10 else 3)
    want = torch.topk(x, 10 if width > 10 else 3)
    assert torch.equal(best, want.values) and torch.equal(at, want.indices)


def test_metrics_count_hits_within_each_cutoff() -> None:
    m = ne.metrics(np.array([1, 2, 0, 11]), cutoffs=(1, 10))
    assert m["recall@1"] == 0.25 and m["recall@10"] == 0.5
    assert m["mrr@10"] == pytest.approx((1 + 0.5) / 4)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3)) / 4)


def _cycles(n_entities: int = 40, length: int = 30, seed: int = 0) -> pd.DataFrame:
    """Each entity walks a fixed cycle of six keys from a random start: the next key is
    certain given the current one, and the keys are equally popular."""
    rng = np.random.default_rng(seed)
    cycle = ["login", "list", "view", "cart", "pay", "logout"]
    rows = []
    for e in range(n_entities):
        start = int(rng.integers(0, 6))
        for t in range(length):
            rows.append(
                {
                    "unique_id": f"u{e}",
                    "ds": pd.Timestamp("2024-01-01") + pd.Timedelta(minutes=t),
                    "key": cycle[(start + t) % 6],
                    "tag": "x" if t % 2 else "y",
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("groups", [None, 3])
def test_a_trained_model_learns_a_cycle_that_popularity_cannot(groups: int | None) -> None:
    """(Both heads: one softmax, the default for so few values, and a two-level one.)"""
    df = _cycles()
    cfg = TrainConfig(
        next="key",
        categorical=("tag",),
        hidden_size=16,
        embedding=8,
        holdout_fraction=0.2,
        epochs=40,
        lr=0.02,
        refit=False,
        groups=groups,
    )
    res = train(df, cfg)
    spec = res.model.spec
    assert spec.task == "next" and spec.categorical == ("key", "tag")
    assert spec.groups == (groups or 0)
    assert set(spec.vocabularies[0]) == {"login", "list", "view", "cart", "pay", "logout"}
    data, feats = ne.check_events(df, ["key", "tag"])
    series = ne.split_tokens(data, ["key", "tag"], feats)
    starts = ne.held_out(series, 0.2)
    got = ne.score(res.model, series, starts)
    base = ne.baselines(series, starts, "key", spec.vocabulary["key"])
    assert got["recall@1"] > 0.95 and got["events"] == 40 * 6
    assert base["markov"]["recall@1"] > 0.95  # (a first-order chain is exactly this)
    assert base["popular"]["recall@1"] < 0.3
    assert res.span is not None and res.span["points"].tolist() == [24] * 40
    served, *_ = ne.offline_served(res.model, series[0])  # the stream names the same values
    assert (served[starts[0] - 1 : -1, 0] == ne.next_inputs(series[0], spec)[starts[0] :, 0]).all()


def test_the_held_out_share_leaves_every_entity_its_start() -> None:
    series = [
        ne.TokenSeries("a", ["d"] * n, {"k": ["x"] * n}, np.zeros((n, 0))) for n in (1, 2, 10)
    ]
    assert ne.held_out(series, 0.2) == [1, 1, 8]
    with pytest.raises(ConfigError):
        ne.held_out(series, 1.0)


def test_the_served_surprise_and_rank_are_the_previous_predictions() -> None:
    """Independently of the stepper: each event's surprise is ``-ln`` of the probability the
    prediction before it gave its value, and its rank that value's place among the values that
    prediction named (None beyond them, or for a value out of vocabulary)."""
    model = next_model(vocab=12, k=4)
    rng = np.random.default_rng(1)
    n = 40
    keys = [rng.choice([*(f"k{j}" for j in range(12)), "nope"]) for _ in range(n)]
    s = ne.TokenSeries("a", ["d"] * n, {"key": keys, "tag": ["a"] * n}, np.zeros((n, 0)))
    served, *_ = ne.offline_served(model, s)
    logp = torch.log_softmax(torch.from_numpy(ne.offline_logits(model, s)).double(), -1).numpy()
    ids = model.spec.vocabulary["key"].ids(keys)
    assert np.isnan(served[0, -2:]).all()
    ranked = 0
    for t in range(1, n):
        np.testing.assert_allclose(served[t, -2], -logp[t - 1, ids[t]], rtol=1e-5)
        top = (np.argsort(-logp[t - 1, 1:])[:4] + 1).tolist()
        assert served[t - 1, :4].astype(int).tolist() == top
        want = top.index(ids[t]) + 1 if ids[t] in top else None
        got = None if np.isnan(served[t, -1]) else int(served[t, -1])
        assert got == want
        ranked += want is not None
    assert 0 < ranked < n - 1  # (both cases happen)


def test_tail_and_state_get_show_next_event_predictions() -> None:
    import math

    from rich.console import Console

    from streamer.ops.inspect import NEXT_HEADER, format_prediction, long_rows
    from streamer.schemas import Prediction

    p = Prediction(
        "u1", "d", math.nan, 0, 1, "v", 2, (0.5, 0.25), next=("a", "b[x]"), surprise=1.5, rank=None
    )
    console = Console(record=True, width=200)
    console.print(format_prediction(p))
    assert "next [a:0.5 b[x]:0.25]  surprise 1.500 rank >k" in console.export_text()
    assert NEXT_HEADER.split(",") == ["unique_id", "ds", "k", "next", "probability"]
    assert long_rows(p) == ["u1,d,1,a,0.5", "u1,d,2,b[x],0.25"]


async def test_a_stored_state_names_its_last_prediction() -> None:
    from streamer.ops.states import record_to_dict
    from streamer.serve.predictor import Predictor
    from streamer.state import MemoryStateStore, decode

    model = next_model(k=4)
    store = MemoryStateStore()
    pred = Predictor(model, "v1", store)
    [p] = (await pred.process([ne_event("k3", 0)])).predictions
    rec = decode((await store.get_many(["e"]))[0] or b"")
    d = record_to_dict("e", "key", rec)
    assert d["components"] is None
    vocab = model.spec.vocabularies[0]
    assert [vocab[i - 1] for i in d["previous_prediction"]["top_ids"]] == list(p.next)


def ne_event(key: str | None, offset: int) -> Event:
    return Event("e", "d", float("nan"), (), 0, offset, (key, "a"))


async def test_after_a_model_change_the_first_event_has_no_surprise() -> None:
    """A state written by another model version holds that model's last prediction (its ids may
    be another vocabulary's): the new model's first event there gets no surprise or rank."""
    from streamer.serve.predictor import Predictor
    from streamer.state import MemoryStateStore

    store = MemoryStateStore()
    first = Predictor(next_model(seed=1), "v1", store)
    await first.process([ne_event("k1", 0), ne_event("k2", 1)])
    second = Predictor(next_model(seed=2), "v2", store)
    [a, b] = (await second.process([ne_event("k3", 2), ne_event("k4", 3)])).predictions
    assert a.step == 3 and a.surprise is None and a.rank is None
    assert b.surprise is not None


def test_log_sessions_follow_their_rules_and_each_anomaly_breaks_them() -> None:
    from streamer.train.logs import KINDS, UNKNOWN_KEYS, log_sessions, normal

    train = log_sessions(300, seed=1)
    assert "anomaly" not in train and all(
        normal(list(g.key)) for _, g in train.groupby("unique_id")
    )
    test = log_sessions(300, 1 / 3, seed=2)
    hurt = test.groupby("unique_id")["anomaly"].max()
    assert hurt.sum() == 100 and (test.groupby("unique_id")["anomaly"].sum() <= 1).all()
    for uid, g in test.groupby("unique_id"):
        assert normal(list(g.key)) == (not hurt[uid]), uid
    unknown = test[test.key.isin(UNKNOWN_KEYS)]
    assert (unknown.anomaly == 1).all() and len(unknown) == len(range(2, 100, len(KINDS)))  # 33
    assert log_sessions(50, 0.5, seed=3).equals(log_sessions(50, 0.5, seed=3))  # seeded


def test_the_python_api_steps_next_event_models_from_mappings() -> None:
    import streamer.api as st

    model = next_model(k=3)
    live = st.OnlinePredictor(st.Model(model, model.spec, "v1"))
    try:
        rows = [
            {"unique_id": "a", "ds": "1", "key": "k1", "tag": "a"},
            {"unique_id": "a", "ds": "2", "key": None, "tag": "b", "y": 2.0},
        ]
        first, second = live.predict(rows)
    finally:
        live.close()
    assert len(first.next) == 3 and first.surprise is None and first.y != first.y
    assert second.surprise is not None and second.rank is None and second.y == 2.0
    with pytest.raises(ConfigError, match="no 'tag'"):
        live.events([{"unique_id": "a", "ds": "3", "key": "k1"}])


def test_hashed_columns_map_any_text_to_a_bucket_and_keep_no_values() -> None:
    v = Vocabulary((), buckets=7)
    ids = v.ids(["a", "b", "a", None, 3, "\ud800", "x" * 1024])
    assert ids[0] == ids[2] and ids[3] == ids[4] == OOV and len(v) == 8
    assert all(1 <= i <= 7 for i in ids[[0, 1, 5, 6]])
    assert Vocabulary((), 7).ids(["a"]).tolist() == [ids[0]]  # (stable: CRC32, no salt)
    with pytest.raises(ConfigError):
        Vocabulary(("a",), buckets=3)
    model = next_model(hash_buckets=16)
    spec = model.spec
    assert ModelSpec.from_dict(spec.to_dict()) == spec and spec.to_dict()["hash_buckets"] == 16
    assert spec.vocabulary["key"].buckets == 0 and spec.vocabulary["tag"].buckets == 16
    assert model.embeddings[1].num_embeddings == 17
    df = _cycles(n_entities=12, length=12)
    df["tag"] = [f"t{i}" for i in range(len(df))]  # every value new: open-ended
    res = train(df, TrainConfig(next="key", categorical=("tag",), hash_buckets=32, epochs=2))
    assert res.model.spec.vocabularies[1] == () and res.summary["vocabulary"]["tag"] == 32


def test_movielens_100k_comes_from_recboles_wheel_as_events() -> None:
    """(Downloads RecBole's wheel from PyPI once, without its dependencies, into the cache.)"""
    from streamer.train.data import movielens_100k

    df = movielens_100k()
    assert len(df) == 100_000 and df.unique_id.nunique() == 943 and df["item"].nunique() == 1682
    assert list(df.columns) == ["unique_id", "ds", "item", "rating"]
    assert df.groupby("unique_id")["ds"].apply(lambda d: d.is_monotonic_increasing).all()
    assert df.rating.between(1, 5).all() and df["item"].str.startswith("m").all()
