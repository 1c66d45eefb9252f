"""Ensembles: several trained models of one cell and shape served as one model.

M members of the same cell, layers and hidden size H (trained with different seeds, or other
training options) become one :class:`~streamer.model.SequenceModel` whose core has M·H units per
layer with block-diagonal weights: member m owns units ``m·H .. (m+1)·H`` of every gate, and reads
only its own units of the layer below and of its own state. A step of that core is the M members'
steps at once (one batched cell call per layer and wave, as for a single model), an entity's state
is the members' states side by side (``(L, M·H)``), and the head (block-diagonal too) gives each
member's K outputs; :meth:`SequenceModel.serve` combines them by their median. Everything else
(scaling, intervals, the state store, kept outputs, the registry) sees one model: a registry
version is the ensemble.

Exact: the zero blocks add exact zeros, so each member's arithmetic is its own (to the summation
order of the matrix products). The cost: the recurrent products are M times larger than the M
members' own (``(M·H)²`` against ``M·H²`` per gate), which is what one call per layer buys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from streamer.errors import ConfigError
from streamer.model.recurrent import ModelSpec, SequenceModel

__all__ = ["merge"]

#: Gates per layer of each cell, in torch's layout.
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _same_shape(specs: Sequence[ModelSpec]) -> ModelSpec:
    first = specs[0]
    for s in specs[1:]:
        for name in ("cell", "hidden_size", "num_layers", "task", "horizon", "classes"):
            if getattr(s, name) != getattr(first, name):
                raise ConfigError(
                    f"ensemble members must share {name}: {getattr(first, name)!r} and "
                    f"{getattr(s, name)!r}"
                )
        for name in (
            "features",
            "feature_mean",
            "feature_std",
            "scaling",
            "window",
            "freq",
            "season",
            "season2",
            "smoothing",
        ):
            if getattr(s, name) != getattr(first, name):
                raise ConfigError(f"ensemble members must be trained on the same data ({name})")
    if any(s.members > 1 for s in specs):
        raise ConfigError("an ensemble's members are single models")
    return first


def merge(models: Sequence[SequenceModel]) -> SequenceModel:
    """One model serving the median of ``models`` (at least two, same cell and shape)."""
    if len(models) < 2:
        raise ConfigError("an ensemble needs at least two members")
    first = _same_shape([m.spec for m in models])
    n, h, gates = len(models), first.hidden_size, _GATES[first.cell]
    spec = replace(first, members=n, levels=(), interval_lo=(), interval_hi=())
    merged = SequenceModel(spec)
    out = merged.state_dict()
    with torch.no_grad():
        for name, target in out.items():
            target.zero_()
            parts = [m.state_dict()[name] for m in models]
            if name.startswith("head."):
                k = first.outputs
                for i, p in enumerate(parts):
                    rows = slice(i * k, (i + 1) * k)
                    if name.endswith("weight"):
                        target[rows, i * h : (i + 1) * h] = p
                    else:
                        target[rows] = p
                continue
            # rnn.weight_ih_l{k}, weight_hh_l{k}, bias_ih_l{k}, bias_hh_l{k}: per gate g, member
            # i's rows are g·M·H + i·H ..; its columns are its own units (all inputs at layer 0)
            own_columns = not name.startswith("rnn.weight_ih_l0")
            for g in range(gates):
                for i, p in enumerate(parts):
                    rows = slice(g * n * h + i * h, g * n * h + (i + 1) * h)
                    src = p[g * h : (g + 1) * h]
                    if name.startswith("rnn.weight"):
                        cols = slice(i * h, (i + 1) * h) if own_columns else slice(None)
                        target[rows, cols] = src
                    else:
                        target[rows] = src
    merged.load_state_dict(out)
    return merged.eval()
