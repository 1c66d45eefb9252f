"""A next-event model's outputs after each event: the top values, and the event's surprise.

The device gives, per event (:meth:`streamer.model.SequenceModel.next_served`), the ids of the
``k`` most likely next values and their probabilities, the logits' log-sum-exp, and the logit that
the *previous* prediction gave this event's value (a two-level softmax gives log-probabilities:
its log-sum-exp is 0). What the previous prediction was is the
entity's: it lives in its state as ``2 + k`` float64 components (:data:`MARKER`, the log-sum-exp
and the ids of its top values), so the surprise of an event, ``-ln p = lse_prev -
logit_prev(value)``, and its rank among the values named before it are exact, whichever batch the
previous event was in. The predictor and the offline pass both go through :func:`advance`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["MARKER", "advance", "components"]

#: The first component of a next-event model's state: negative, which tells it from a seasonal
#: forecaster's (whose first is a count of observations) to anything reading the record.
MARKER = -1.0

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def components(top_k: int) -> int:
    """float64 values of an entity's previous prediction in its state."""
    return 2 + top_k


def advance(raw: F64, actual: I64, before: F64, had: npt.NDArray[np.bool_]) -> tuple[F64, F64]:
    """Events of distinct entities: their served values ``(N, 2k + 2)`` (the ids of the top
    values, their probabilities, the surprise and the rank: NaN where the entity had no previous
    prediction, and the rank also where the event's value was not among its top ``k``) and the
    entities' components after them ``(N, 2 + k)``.

    ``raw`` ``(N, 2k + 2)`` as the device gave it, ``actual`` each event's id, ``before`` the
    components before each event, ``had``: whether there was a previous prediction."""
    k = (raw.shape[1] - 2) // 2
    top, lse, logit = raw[:, :k], raw[:, 2 * k], raw[:, 2 * k + 1]
    surprise = np.where(had, before[:, 1] - logit, np.nan)
    named = before[:, 2:] == actual[:, None].astype(np.float64)
    found = had & named.any(1) & (actual > 0)
    rank = np.where(found, named.argmax(1) + 1.0, np.nan)
    values = np.concatenate([raw[:, : 2 * k], surprise[:, None], rank[:, None]], 1)
    return values, np.concatenate([np.full((len(raw), 1), MARKER), lse[:, None], top], 1)
