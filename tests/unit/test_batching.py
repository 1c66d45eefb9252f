from __future__ import annotations

import random

from streamer.batching import plan_waves


def test_waves_keep_per_entity_order_and_hold_each_entity_once() -> None:
    rng = random.Random(3)
    for _ in range(200):
        keys = [rng.choice("abcdefg") for _ in range(rng.randint(0, 60))]
        plan = plan_waves(keys)
        seen_order: dict[str, list[int]] = {}
        covered = []
        for w in plan.waves:
            ents = [keys[i] for i in w]
            assert len(ents) == len(set(ents)), "an entity twice in one wave"
            for i in w.tolist():
                seen_order.setdefault(keys[i], []).append(i)
                covered.append(i)
        assert sorted(covered) == list(range(len(keys)))
        for k, idx in seen_order.items():
            assert idx == sorted(idx), f"entity {k} stepped out of order"
            assert idx == [i for i, kk in enumerate(keys) if kk == k]
        assert len(plan.waves) == max((keys.count(k) for k in set(keys)), default=0)
        assert [plan.entities[s] for s in plan.slot.tolist()] == keys


def test_batch_without_repeats_is_one_wave() -> None:
    plan = plan_waves(["x", "y", "z"])
    assert [w.tolist() for w in plan.waves] == [[0, 1, 2]]
