"""Literal LSTM-LRP twins written from the equations of Arras et al. (2017), independent of relprop's engine.

Model: one unidirectional LSTM layer in ``nn.LSTM``'s parameter layout (gate rows input, forget, candidate,
output) followed by a linear head on the last hidden state::

    i, f, o = sigmoid(W_* [x_t, h_{t-1}] + b_*),  g = tanh(z_g),  z_g = W_g [x_t, h_{t-1}] + b_g
    c_t = f c_{t-1} + i g,  h_t = o tanh(c_t),  y = W_out h_T + b_out

LSTM-LRP: the epsilon rule ``R_j = sum_k a_j w_jk / (z_k + eps sign z_k) R_k`` on linear maps; in
``gate * signal`` the signal takes all; the sum ``c_t`` splits in proportion to its terms with denominator
``c_t + s sign c_t``; tanh passes relevance unchanged.

- :func:`lstm_lrp_numpy`: numpy, one sample at a time, a loop backwards over time;
- :func:`lstm_lrp_by_gradient`: gradient x input of a torch forward pass whose gates are detached, whose tanh
  has the gradient ``tanh(z)/z`` (identity rule) and whose linear maps and sum carry the stabilised ratios
  ``z / (z + eps sign z)`` as detached factors.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _sign(z: np.ndarray) -> np.ndarray:
    return np.where(z >= 0, 1.0, -1.0)  # zero counts as positive, as in relprop.core.stabilize


def _lrp_epsilon(
    a: np.ndarray, w: np.ndarray, z: np.ndarray, relevance: np.ndarray, eps: float
) -> np.ndarray:
    """Epsilon rule for z = w a + b: a (J,), w (K, J), z (K,), relevance (K,) -> (J,)."""
    ratio = relevance / (z + eps * _sign(z))  # (K,)
    return (a[None, :] * w * ratio[:, None]).sum(axis=0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def lstm_lrp_numpy(
    w_ih: np.ndarray,
    w_hh: np.ndarray,
    b_ih: np.ndarray,
    b_hh: np.ndarray,
    w_out: np.ndarray,
    b_out: np.ndarray,
    x: np.ndarray,
    target: int,
    epsilon: float,
    stabilizer: float,
) -> tuple[np.ndarray, float]:
    """LSTM-LRP of one sequence x (T, D) for class ``target``: relevance (T, D) and the explained logit."""
    steps, _ = x.shape
    hidden = w_hh.shape[1]
    b = b_ih + b_hh
    block = {name: slice(k * hidden, (k + 1) * hidden) for k, name in enumerate("ifgo")}
    h, c = np.zeros(hidden), np.zeros(hidden)
    saved = []
    for t in range(steps):
        a = np.concatenate([x[t], h])
        w = np.concatenate([w_ih, w_hh], axis=1)
        pre = w @ a + b
        i, f, o = (_sigmoid(pre[block[k]]) for k in "ifo")
        z_g = pre[block["g"]]
        g = np.tanh(z_g)
        c_prev = c
        c = f * c_prev + i * g
        h = o * np.tanh(c)
        saved.append(
            {"a": a, "w_g": w[block["g"]], "z_g": z_g, "i": i, "f": f, "g": g, "c_prev": c_prev, "c": c}
        )
    y = w_out @ h + b_out
    relevance_x = np.zeros_like(x)
    # output layer: only the target logit carries relevance, equal to its value
    relevance_h = _lrp_epsilon(
        h, w_out[target : target + 1], y[target : target + 1], y[target : target + 1], epsilon
    )
    relevance_c = np.zeros(hidden)
    for t in range(steps - 1, -1, -1):
        s = saved[t]
        relevance_c = relevance_c + relevance_h  # h_t = o * tanh(c_t): the gate o gets nothing, tanh passes
        denominator = s["c"] + stabilizer * _sign(s["c"])
        relevance_c_prev = s["f"] * s["c_prev"] / denominator * relevance_c  # the gate f gets nothing
        relevance_g = s["i"] * s["g"] / denominator * relevance_c  # the gate i gets nothing; tanh passes
        relevance_a = _lrp_epsilon(s["a"], s["w_g"], s["z_g"], relevance_g, epsilon)
        relevance_x[t] = relevance_a[: x.shape[1]]
        relevance_h = relevance_a[x.shape[1] :]
        relevance_c = relevance_c_prev
    return relevance_x, float(y[target])


def _stable(z: Tensor, s: float) -> Tensor:
    return z + s * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def _ratio(value: Tensor, linear_part: Tensor, z: Tensor, s: float) -> Tensor:
    """Value ``value`` whose gradient flows through ``linear_part`` scaled by ``z / (z + s sign z)``."""
    scaled = linear_part * (z / _stable(z, s)).detach()
    return scaled + (value - scaled).detach()


def lstm_lrp_by_gradient(
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    w_out: Tensor,
    b_out: Tensor,
    x: Tensor,
    target: Tensor,
    epsilon: float,
    stabilizer: float,
) -> Tensor:
    """LSTM-LRP of a batch x (batch, T, D): gradient x input of the modified forward pass (module doc)."""
    x = x.detach().clone().requires_grad_()
    hidden = w_hh.shape[1]
    w = torch.cat([w_ih, w_hh], dim=1)
    b = b_ih + b_hh
    h = x.new_zeros(x.shape[0], hidden)
    c = x.new_zeros(x.shape[0], hidden)
    for t in range(x.shape[1]):
        a = torch.cat([x[:, t], h], dim=1)
        pre = (a @ w.T + b).detach()  # gates are constants
        i, f, _, o = (torch.sigmoid(part) for part in pre.split(hidden, dim=1))
        w_g, b_g = w[2 * hidden : 3 * hidden], b[2 * hidden : 3 * hidden]
        linear = a @ w_g.T
        z_g = _ratio(linear + b_g, linear, (linear + b_g).detach(), epsilon)
        g_value = torch.tanh(z_g.detach())
        g = z_g * (g_value / torch.where(z_g == 0, torch.ones_like(z_g), z_g)).detach()  # identity-rule tanh
        terms = f * c + i * g
        c = _ratio(terms, terms, terms.detach(), stabilizer)
        tanh_c = torch.tanh(c.detach())
        h = o * c * (tanh_c / torch.where(c == 0, torch.ones_like(c), c)).detach()
    linear = h @ w_out.T
    y = _ratio(linear + b_out, linear, (linear + b_out).detach(), epsilon)
    (grad,) = torch.autograd.grad(y.gather(1, target.reshape(-1, 1)).sum(), x)
    return x.detach() * grad
