"""A next-event model's head as served: from hidden states to the top values, their probabilities
and what the stepper needs for the arrived event's surprise (:mod:`streamer.model.nextevent`).

One softmax over the vocabulary (:func:`flat`), or a two-level softmax (:func:`grouped`) that
searches a few groups. Torch only; :meth:`streamer.model.SequenceModel.next_served` calls
:func:`served`, which training's offline pass uses too, so streamed and offline predictions come
from the same code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from streamer.model.recurrent import SequenceModel

__all__ = ["flat", "grouped", "served", "top_k", "within"]


def served(model: SequenceModel, out: Tensor, before: Tensor, ids: Tensor) -> Tensor:
    """A next-event model's served outputs ``(N, 2k + 2)`` (:mod:`streamer.model.nextevent`)
    from the top layer's hidden state after each event ``out`` ``(N, H)`` and before it
    ``before`` ``(N, H)``, and each event's id ``(N,)``: the ids of the ``k`` most likely
    known values next (out-of-vocabulary is never named), their probabilities, the
    log-sum-exp of the logits and the logit the previous prediction gave the event's value
    (the stepper turns the last two into the event's surprise).

    One softmax: the logits of the whole vocabulary, made and reduced a few rows at a time
    on a CPU so that they stay in the cache (a batch's would be ``N x V`` floats), all at
    once on a GPU. A two-level softmax (:attr:`~streamer.model.ModelSpec.groups`): the groups'
    probabilities, then the values of the ``groups_searched`` most likely groups and of the
    event's own group before it: ``(m + 1) x V / G`` logits a row instead of ``V``, and
    log-probabilities (the log-sum-exp is 0)."""
    spec = model.spec
    two_level = model.group_head is not None
    if out.device.type == "cpu":  # (a two-level softmax's few logits: thousands of rows)
        width = (spec.groups_searched + 1) * spec.group_size // 4 if two_level else spec.outputs
        rows = max(1, (1 << 18) // width)
    else:  # (all at once, up to 512 MiB of logits)
        rows = max(1, (1 << 27) // (spec.outputs * (2 if two_level else 1)))
    each = grouped if two_level else flat
    if rows >= len(out):
        return each(model, out, before, ids)
    done = out.new_empty((len(out), spec.served_outputs))
    for a in range(0, len(out), rows):
        b = a + rows
        done[a:b] = each(model, out[a:b], before[a:b], ids[a:b])
    return done


def flat(model: SequenceModel, out: Tensor, before: Tensor, ids: Tensor) -> Tensor:
    """:func:`served` for one softmax over the vocabulary."""
    logits = model.head(out)
    previous = (before * model.head.weight[ids]).sum(-1, keepdim=True) + model.head.bias[ids, None]
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    top, at = torch.topk(logits[..., 1:], model.spec.served_top_k, dim=-1)
    return torch.cat([(at + 1).to(logits.dtype), torch.exp(top - lse), lse, previous], -1)


def grouped(model: SequenceModel, out: Tensor, before: Tensor, ids: Tensor) -> Tensor:
    """:func:`served` for a two-level softmax. With :attr:`~streamer.model.ModelSpec.groups_exact`
    the predictions whose k-th value is less likely than the most likely group not searched
    (which bounds each of its values) rank the whole vocabulary instead: the served top k is
    then the model's own, at the price of a host sync per batch on a GPU."""
    assert model.group_head is not None
    spec = model.spec
    n, size, k = len(out), spec.group_size, spec.served_top_k
    m = _searched_groups(model)
    wider = spec.groups_exact and m < spec.group_count
    both = torch.cat([out, before])  # (2N, H)
    group = torch.log_softmax(model.group_head(both), -1)  # (2N, G)
    top_group, top = top_k(group[:n], m + 1 if wider else m)  # (N, m), or m + 1 to bound
    own = torch.div(ids, size, rounding_mode="floor")  # each event's group, and place in it
    place = ids - own * size
    arange = torch.arange(n, device=out.device)
    # the pairs (hidden state, group) whose values' logits are made: after each event its m
    # most likely groups, before it its own
    which = torch.cat([top[:, :m].reshape(-1), own])  # (P,)
    rows = torch.cat([arange.repeat_interleave(m), n + arange])  # (P,): rows of both
    logp = within(model, both, rows, which)  # (P, S): log p(value | group)
    best, chosen = _best(top_group, top, logp[: n * m], m, size, k)
    if wider:
        _widen(model, out, best, chosen, top_group[:, m])
    previous = group[n + arange, own] + logp[n * m + arange, place]
    return torch.cat(
        [chosen.to(out.dtype), torch.exp(best), out.new_zeros(n, 1), previous[:, None]], -1
    )


def _searched_groups(model: SequenceModel) -> int:
    """The groups a prediction searches first: ``groups_searched``, or more if need be to name
    k known values whichever are searched (the last group may hold fewer, and group 0 holds
    out-of-vocabulary, never named)."""
    spec = model.spec
    size, k = spec.group_size, spec.served_top_k
    last = spec.outputs - (spec.group_count - 1) * size
    return min(spec.group_count, max(spec.groups_searched, -(-(k + 1 + size - last) // size)))


def _best(
    top_group: Tensor, top: Tensor, logp: Tensor, m: int, size: int, k: int
) -> tuple[Tensor, Tensor]:
    """The k most likely known values among the values of each row's m searched groups ``top``
    (their log-probabilities ``top_group``; ``logp`` ``(N·m, S)`` the values' within them):
    their log-probabilities and ids, ``(N, k)`` each."""
    n = len(top)
    joint = top_group[:, :m, None] + logp.view(n, m, size)  # (N, m, S)
    joint[..., 0].masked_fill_(top[:, :m] == 0, -torch.inf)  # (id 0, out-of-vocabulary, unnamed)
    best, at = top_k(joint.view(n, m * size), k)
    chosen = top.gather(1, torch.div(at, size, rounding_mode="floor")) * size + at % size
    return best, chosen


def _widen(model: SequenceModel, out: Tensor, best: Tensor, chosen: Tensor, bound: Tensor) -> None:
    """The rows whose k-th value ``best[:, -1]`` is below ``bound`` (the log-probability of the
    most likely group not searched, which bounds each of its values') ranked over the whole
    vocabulary instead, a few rows at a time; ``best`` and ``chosen`` in place."""
    spec = model.spec
    rows = torch.nonzero(best[:, -1] < bound).squeeze(1)  # (a host sync)
    step = max(1, (1 << 18) // spec.outputs)
    for a in range(0, len(rows), step):
        r = rows[a : a + step]
        logp = model.logits(out[r])  # (R, V): every value's log-probability
        logp[:, 0] = -torch.inf  # (out-of-vocabulary is never named)
        best[r], chosen[r] = top_k(logp, spec.served_top_k)


def within(
    model: SequenceModel, both: Tensor, rows: Tensor, which: Tensor, whole: bool | None = None
) -> Tensor:
    """The log-probabilities of the values of group ``which[p]`` within it for hidden state
    ``both[rows[p]]`` ``(P, S)`` (beyond the vocabulary: -inf). On a CPU one product per
    group present, over the rows that need it (no weights copied); on a GPU the whole head
    over ``both``, one product, and the pairs' groups gathered from it (no host sync);
    ``whole`` chooses."""
    spec = model.spec
    shape = (spec.group_count, spec.group_size)
    if both.device.type != "cpu" if whole is None else whole:
        return torch.log_softmax(model.group_values(both)[rows, which], -1)
    weight = model.head.weight.view(*shape, -1)  # (G, S, H)
    bias = model.head.bias.view(shape) + model.pad
    order = torch.argsort(which)
    counts = torch.bincount(which, minlength=spec.group_count).tolist()
    pairs = both[rows[order]]  # (P, H), sorted by group
    done = both.new_empty((len(which), spec.group_size))
    a = 0
    for g, c in enumerate(counts):
        if c:
            torch.addmm(bias[g], pairs[a : a + c], weight[g].t(), out=done[a : a + c])
            a += c
    back = torch.empty_like(order)  # (the pairs' places in the sorted order)
    back[order] = torch.arange(len(order), device=order.device)
    return torch.log_softmax(done, -1)[back]


def top_k(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``torch.topk(x, k)`` over the last dimension of ``(N, W)``, values and indices the same
    (ties aside). Rows of ``16k`` to ``64k`` values take two steps: the ``k`` blocks of four whose
    maxima are highest hold the top ``k`` values (a block outside them has ``k`` values above
    its maximum), then the top ``k`` of those ``4k``; torch's CPU kernel sorts rows this short
    several times slower than it selects from longer ones."""
    n, w = x.shape
    if not 16 * k <= w < 64 * k or x.device.type != "cpu":
        values, indices = torch.topk(x, k, dim=-1)
        return values, indices
    if w % 4:
        x = nn.functional.pad(x, (0, 4 - w % 4), value=-torch.inf)
    blocks = x.view(n, -1, 4)
    which = torch.topk(blocks.amax(-1), k, dim=-1, sorted=False).indices  # (N, k)
    values = blocks.gather(1, which[..., None].expand(-1, -1, 4)).view(n, 4 * k)
    best, at = torch.topk(values, k, dim=-1)
    return best, which.gather(1, torch.div(at, 4, rounding_mode="floor")) * 4 + at % 4
