"""How the per-step integer logits become a prediction: the readout rule of an integer graph.

The readout synapses deliver, at every timestep ``t``, integer logits ``y_t [K]`` (readout bias
included) to the host. The prediction is the argmax over classes of a weighted sum over time,
``sum_t w_t * y_t``, with per-class time weights ``w_t [K]`` set by the graph's readout rule
(``graph.meta["source"][READOUT_KEY]``, written by :func:`calibration.float_graph.nir_to_float_graph`):

* ``spike-count``: the logits are the spikes of the last population (identity weights): ``w_t = 1``,
  the spike counts;
* ``membrane`` without an LI node (our own graphs: ``Affine`` -> ``Output``): ``w_t = 1``, the mean of
  the logits over time;
* ``membrane`` through an LI node of leak ``a = dt / tau`` (per class): the mean over time of its
  membrane ``v_t = (1 - a) v_{t-1} + a y_t`` (forward Euler from 0, :mod:`xoresnet.nir.interpreter`),
  which is ``sum_k y_k (1 - (1 - a)^(T - k)) / T``: ``w_k = 1 - (1 - a)^(T - k)``, ``k = 0 .. T - 1``.

The weights are float64 on the host; the logits they weigh are the exact integers Lava and the
reference produce, so equal logits give equal predictions.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

READOUT_KEY = "readout_decoding"


def decoding_of(graph) -> dict[str, Any]:
    """The readout rule recorded for ``graph`` (an integer graph), ``{"rule": "membrane"}`` if none."""
    source = (getattr(graph, "meta", None) or {}).get("source") or {}
    return source.get(READOUT_KEY) or {"rule": "membrane", "li_leak": None}


def time_weights(decoding: dict[str, Any], timesteps: int) -> Optional[np.ndarray]:
    """``[T, K]`` float64 time weights of ``decoding``, or None when every weight is 1."""
    leak = decoding.get("li_leak")
    if leak is None:
        return None
    a = np.asarray(leak, np.float64)
    if np.all(a == 1.0):
        return None
    k = np.arange(timesteps, dtype=np.float64)[:, None]
    return 1.0 - (1.0 - a[None, :]) ** (timesteps - k)


def readout_time_weights(graph) -> Optional[np.ndarray]:
    """:func:`time_weights` of an integer graph's readout rule at its ``timesteps``."""
    return time_weights(decoding_of(graph), int(graph.timesteps))


def scores(logits, weights: Optional[np.ndarray]):
    """``[..., K]``: the readout's class scores from per-step logits ``[T, ..., K]`` (numpy or torch),
    summed over time with ``weights [T, K]`` (None: a plain sum)."""
    if weights is None:
        return logits.sum(0)
    if isinstance(logits, np.ndarray):
        w = weights.reshape((weights.shape[0],) + (1,) * (logits.ndim - 2) + (weights.shape[1],))
        return (logits.astype(np.float64) * w).sum(0)
    import torch

    w = torch.as_tensor(weights, dtype=torch.float64, device=logits.device)
    w = w.view((w.shape[0],) + (1,) * (logits.dim() - 2) + (w.shape[1],))
    return (logits.to(torch.float64) * w).sum(0)
