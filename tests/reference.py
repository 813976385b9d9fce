"""Float64 NumPy reference for VALP, written independently of valr_core's code path.

Two small critics with hand-derived backward passes (w.r.t. inputs and parameters):
- MLP: tanh hidden layer, linear output (scalar critic or classifier logits).
- Conv (NCHW): conv3x3 -> softplus -> conv3x3 -> softplus -> spatial mean -> dense.
Smooth activations keep float32 and float64 runs on the same side of every kink (see tests/test_parity.py's tolerances).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- critics


def mlp_forward(p: dict, x: np.ndarray) -> tuple[np.ndarray, dict]:
    h = np.tanh(x @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"], {"x": x, "h": h}


def mlp_input_vjp(p: dict, cache: dict, gy: np.ndarray) -> np.ndarray:
    gh = (gy @ p["w2"].T) * (1 - cache["h"] ** 2)
    return gh @ p["w1"].T


def mlp_param_vjp(p: dict, cache: dict, gy: np.ndarray) -> dict:
    gh = (gy @ p["w2"].T) * (1 - cache["h"] ** 2)
    return {"w1": cache["x"].T @ gh, "b1": gh.sum(0), "w2": cache["h"].T @ gy, "b2": gy.sum(0)}


def _softplus(z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, z)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 'same' convolution (cross-correlation), NCHW input, OIHW kernel."""
    n, _, hh, ww = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], hh, ww)) + b[None, :, None, None]
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i : i + hh, j : j + ww], w[:, :, i, j])
    return out


def _conv_input_vjp(x_shape: tuple, w: np.ndarray, g: np.ndarray) -> np.ndarray:
    n, c, hh, ww = x_shape
    gx = np.zeros((n, c, hh + 2, ww + 2))
    for i in range(3):
        for j in range(3):
            gx[:, :, i : i + hh, j : j + ww] += np.einsum("nohw,oc->nchw", g, w[:, :, i, j])
    return gx[:, :, 1:-1, 1:-1]


def _conv_param_vjp(x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, c, hh, ww = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    gw = np.zeros((g.shape[1], c, 3, 3))
    for i in range(3):
        for j in range(3):
            gw[:, :, i, j] = np.einsum("nohw,nchw->oc", g, xp[:, :, i : i + hh, j : j + ww])
    return gw, g.sum((0, 2, 3))


def conv_forward(p: dict, x: np.ndarray) -> tuple[np.ndarray, dict]:
    z1 = _conv(x, p["c1"], p["c1b"])
    a1 = _softplus(z1)
    z2 = _conv(a1, p["c2"], p["c2b"])
    a2 = _softplus(z2)
    pooled = a2.mean((2, 3))
    return pooled @ p["w"] + p["b"], {"x": x, "z1": z1, "a1": a1, "z2": z2, "pooled": pooled}


def _conv_backward_to_z1(p: dict, c: dict, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hh, ww = c["z2"].shape[2:]
    g_a2 = np.broadcast_to((gy @ p["w"].T)[:, :, None, None] / (hh * ww), c["z2"].shape)
    g_z2 = g_a2 * _sigmoid(c["z2"])
    g_z1 = _conv_input_vjp(c["a1"].shape, p["c2"], g_z2) * _sigmoid(c["z1"])
    return g_z2, g_z1


def conv_input_vjp(p: dict, c: dict, gy: np.ndarray) -> np.ndarray:
    _, g_z1 = _conv_backward_to_z1(p, c, gy)
    return _conv_input_vjp(c["x"].shape, p["c1"], g_z1)


def conv_param_vjp(p: dict, c: dict, gy: np.ndarray) -> dict:
    g_z2, g_z1 = _conv_backward_to_z1(p, c, gy)
    c2, c2b = _conv_param_vjp(c["a1"], g_z2)
    c1, c1b = _conv_param_vjp(c["x"], g_z1)
    return {"c1": c1, "c1b": c1b, "c2": c2, "c2b": c2b, "w": c["pooled"].T @ gy, "b": gy.sum(0)}


@dataclass(frozen=True)
class Critic:
    forward: object
    input_vjp: object
    param_vjp: object


MLP = Critic(mlp_forward, mlp_input_vjp, mlp_param_vjp)
CONV = Critic(conv_forward, conv_input_vjp, conv_param_vjp)

# ----------------------------------------------------------------------------- VALP


def _rows(v: np.ndarray) -> np.ndarray:
    return v.reshape(len(v), -1)


def _unit(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norms = np.sqrt((_rows(d) ** 2).sum(1))
    ok = np.isfinite(norms) & (norms > 1e-12)
    safe = np.where(ok, norms, 1.0)
    return d / safe.reshape((-1,) + (1,) * (d.ndim - 1)), ok


def plus_sign(t: np.ndarray) -> np.ndarray:
    """sign(t) with sign(0) := +1: the derivative of |t| VALP takes at a tie (SPEC "Ties")."""
    return np.where(t >= 0, 1.0, -1.0)


# eps_scale="auto": radii times (median pairwise l2 distance of at most 256 evenly strided
# samples) / 40, 1 for identical samples (docs/conventions-eps-scale.md).
EPS_SCALE_REFERENCE = 40.0
EPS_SCALE_SAMPLES = 256


def median_pairwise_distance(x: np.ndarray) -> float:
    """The median over the pairs i < j of ||x_i - x_j||_2, by direct differences in float64."""
    stride = -(-len(x) // EPS_SCALE_SAMPLES)
    z = _rows(np.asarray(x, np.float64))[::stride]
    i, j = np.triu_indices(len(z), k=1)
    return float(np.median(np.sqrt(((z[i] - z[j]) ** 2).sum(1))))


def data_scale(x: np.ndarray) -> float:
    m = median_pairwise_distance(x)
    return 1.0 if m == 0 else m / EPS_SCALE_REFERENCE


def _add_grads(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


def valp(
    critic: Critic,
    p: dict,
    x: np.ndarray,
    d0: np.ndarray,
    eps: np.ndarray,
    *,
    index: np.ndarray | None = None,
    K: float = 1.0,
    xi: float = 10.0,
    n_power: int = 1,
    clip: tuple[float, float] | None = None,
    mode: str = "squared",
    lam: float = 10.0,
    rho: float = 0.01,
    mu: float = 0.0,
    eps_scale: str | None = None,
) -> dict:
    """VALP with d_X = l2, d_Y = |.| (scalar critic), mean reduction; returns values and
    the gradient of the penalty w.r.t. the critic's parameters. eps_scale="auto" multiplies
    ``eps`` and ``xi`` by ``data_scale`` of the whole batch x (before ``index``)."""
    scale = data_scale(x) if eps_scale == "auto" else 1.0
    eps, xi = eps * scale, xi * scale
    x = x[index] if index is not None else x
    fx, cx = critic.forward(p, x)
    start, _ = _unit(d0)
    d = start
    for _ in range(n_power):
        fr, cr = critic.forward(p, x + xi * d)
        g = critic.input_vjp(p, cr, plus_sign(fr - fx))
        unit, ok = _unit(g)
        d = np.where(ok.reshape((-1,) + (1,) * (x.ndim - 1)), unit, start)
    r = eps.reshape((-1,) + (1,) * (x.ndim - 1)) * d
    x_adv = x + r if clip is None else np.clip(x + r, *clip)
    fa, ca = critic.forward(p, x_adv)
    dx = np.maximum(np.sqrt((_rows(x_adv - x) ** 2).sum(1)), 1e-12)
    diff = (fx - fa)[:, 0]
    q = np.abs(diff) / dx
    L = np.maximum(q - K, 0.0)
    m = len(L)
    if mode == "squared":
        value, dL = lam * np.mean(L**2), 2 * lam * L / m
    else:
        value, dL = mu * np.mean(L) + 0.5 * rho * np.mean(L**2), mu / m + rho * L / m
    dq = dL * (q > K)
    g_fx = (dq * np.sign(diff) / dx)[:, None]
    grads = _add_grads(critic.param_vjp(p, cx, g_fx), critic.param_vjp(p, ca, -g_fx))
    return {"penalty": value, "violations": L, "quotients": q, "r_adv": x_adv - x, "direction": d, "grads": grads,
            "constraint": np.mean(L), "eps": eps, "scale": scale}


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def vat(critic: Critic, p: dict, x: np.ndarray, d0: np.ndarray, eps: float, xi: float) -> dict:
    """VAT's LDS with one power iteration: mean KL(p(x) || p(x + r_adv)), p(x) constant."""
    logits, _ = critic.forward(p, x)
    log_p = _log_softmax(logits)
    d, _ = _unit(d0)
    lq, cq = critic.forward(p, x + xi * d)
    # d KL(p || softmax(q)) / d q = softmax(q) - p
    g = critic.input_vjp(p, cq, np.exp(_log_softmax(lq)) - np.exp(log_p))
    d, _ = _unit(g)
    la, _ = critic.forward(p, x + eps * d)
    kl = (np.exp(log_p) * (log_p - _log_softmax(la))).sum(-1)
    return {"lds": kl.mean(), "kl": kl, "r_adv": eps * d}


# ----------------------------------------------------------------------------- GP / LP
def mlp_input_grad(p: dict, x: np.ndarray) -> np.ndarray:
    """grad_x f(x_i) per sample for the scalar MLP: W1 ((1 - h_i^2) * w2)."""
    _, cache = mlp_forward(p, x)
    return mlp_input_vjp(p, cache, np.ones((len(x), 1)))


def mlp_input_grad_param_vjp(p: dict, x: np.ndarray, G: np.ndarray) -> dict:
    """d/dparams of sum_i <G_i, grad_x f(x_i)>, derived by hand (g = u W1^T, u = s * w2^T,
    s = 1 - h^2, h = tanh(x W1 + b1)); the MLP's second-order backward pass."""
    _, cache = mlp_forward(p, x)
    h = cache["h"]
    s = 1 - h**2
    u = s * p["w2"][:, 0]
    du = G @ p["w1"]
    ds = du * p["w2"][:, 0]
    dz = (-2 * h * ds) * s
    return {"w1": G.T @ u + x.T @ dz, "b1": dz.sum(0), "w2": (du * s).sum(0)[:, None], "b2": np.zeros_like(p["b2"])}


def _reduce_and_weights(v: np.ndarray, how: str) -> tuple[float, np.ndarray]:
    """R(v) and dR/dv."""
    if how == "mean":
        return v.mean(), np.full(len(v), 1.0 / len(v))
    if how == "sum":
        return v.sum(), np.ones(len(v))
    w = np.zeros(len(v))
    w[np.argmax(v)] = 1.0
    return v.max(), w


def interpolates(real: np.ndarray, fake: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    a = alphas.reshape((-1,) + (1,) * (real.ndim - 1))
    return a * real + (1 - a) * fake


def gradient_penalty(
    critic: Critic,
    p: dict,
    real: np.ndarray,
    fake: np.ndarray,
    alphas: np.ndarray,
    *,
    one_sided: bool = False,
    mode: str = "squared",
    reduction: str = "mean",
    lam: float = 10.0,
    rho: float = 0.01,
    mu: float = 0.0,
) -> dict:
    """GP (one_sided=False) or LP at x_hat = alpha*real + (1-alpha)*fake, for a scalar critic.

    Returns the penalty, per-sample norms and violations, the constraint R(L) and, for the MLP
    (whose second-order backward pass is written out), the parameter gradients."""
    x_hat = interpolates(real, fake, alphas)
    _, cache = critic.forward(p, x_hat)
    g = critic.input_vjp(p, cache, np.ones((len(x_hat), 1)))
    norms = np.sqrt((_rows(g) ** 2).sum(1))
    L = np.maximum(norms - 1, 0.0) if one_sided else np.abs(norms - 1)
    dL_dn = (norms > 1).astype(float) if one_sided else np.sign(norms - 1)
    R1, w1 = _reduce_and_weights(L, reduction)
    R2, w2 = _reduce_and_weights(L**2, reduction)
    if mode == "squared":
        value, dL = lam * R2, lam * w2 * 2 * L
    elif mode == "linear":
        value, dL = lam * R1, lam * w1
    else:
        value, dL = mu * R1 + 0.5 * rho * R2, mu * w1 + rho * w2 * L
    out = {"penalty": value, "norms": norms, "violations": L, "constraint": R1, "x_hat": x_hat, "grads": None}
    if critic is MLP:
        c = dL * dL_dn / np.where(norms > 0, norms, 1.0)
        out["grads"] = mlp_input_grad_param_vjp(p, x_hat, c[:, None] * g)
    return out


def central_differences(f, p: dict, keys, h: float = 1e-3) -> dict:
    """Fourth-order central differences of the scalar f(params) w.r.t. params[keys]
    (truncation O(h^4), round-off O(1e-16 / h): about 1e-11 relative for smooth f)."""
    out = {}
    for k in keys:
        g = np.zeros_like(p[k], dtype=np.float64)
        for i in np.ndindex(p[k].shape):
            vals = []
            for step in (2, 1, -1, -2):
                w = p[k].astype(np.float64).copy()
                w[i] += step * h
                vals.append(f({**p, k: w}))
            g[i] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * h)
        out[k] = g
    return out
