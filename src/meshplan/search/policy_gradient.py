"""REINFORCE (Williams 1992) over non-uniform plans, as in the device-placement work (Mirhoseini et al. 2017).

The policy samples a plan in the order its choices depend on one another (an autoregressive factorisation):
1. a base strategy (the per-axis choice of dp, tp, pp, ... among the candidates);
2. the stage sizes one after another: stage k takes the even share of the layers left, round(left / stages
   left), moved by a learned offset; offsets that would leave a later stage empty are masked out, so every
   sampled split is valid and the last stage takes what is left;
3. each layer's recomputation from a distribution learned per (base, stage, layer kind): layers of one kind in
   one stage cost the same (`cost.nonuniform`), so they share their logits and their learning signal.
Each iteration samples a batch, prices it in one cost-model call, and moves every logit (by Adam) along the
score-function gradient ∇ log π(plan) · advantage, plus an entropy bonus. Advantages are centred ranks (fitness
shaping, Wierstra et al. 2014), invariant to the reward's scale: the reward is tokens/s when the plan fits and
minus its memory overflow ratio when it does not. The base choice is ranked against the whole batch; the choices
made after it against the plans of the same base (a per-base baseline), so that each base's policy learns even
while its base is behind. The logits start at zero but for the split's prior toward the even share
(`offset_scale`): nothing of the uniform plans' pricing is given to it. The best plan seen is kept (`Tracker`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost.nonuniform import NUM_OPTIONS, uniform_bounds
from meshplan.search.encoding import PlanSpace, Tracker
from meshplan.search.nonuniform import Pricer


@dataclass(frozen=True)
class PolicyGradientOptions:
    batch: int = 128
    """Plans per update: measured better than 32, 64 or 256 on the benchmark's problems at 20,000 plans."""
    evaluations: int = 20_000
    """Budget: plans priced in all."""
    learning_rate: float = 0.15
    """Adam step size on the logits (Kingma & Ba 2015; beta1 0.9, beta2 0.999)."""
    offset_scale: float = 0.125
    """The first policy draws a stage's offset from the even share of the layers left with probability ∝
    exp(-|offset| / scale), scale = this fraction of one even stage's layers, at least one layer: a prior for
    near-even splits, learned away where the reward says so (few long stages need wide moves; with many short
    ones, small moves add up). A stage may move up to one even stage's layers from its share."""
    entropy: float = 0.01
    """Weight of the policy's entropy in the objective (keeps it exploring)."""
    base_entropy: float = 0.1
    """The same for the choice of base strategy, higher: the base is chosen before the rest of the policy has
    learned what each base is worth, and must not collapse on the one that is easiest to fill early."""
    seed: int = 0


class _Adam:
    """Adam ascent on one logit array."""

    def __init__(self, shape: tuple[int, ...], lr: float) -> None:
        self.m, self.v, self.t, self.lr = np.zeros(shape), np.zeros(shape), 0, lr

    def step(self, param: np.ndarray, grad: np.ndarray) -> None:
        self.t += 1
        self.m = 0.9 * self.m + 0.1 * grad
        self.v = 0.999 * self.v + 0.001 * grad**2
        m_hat, v_hat = self.m / (1 - 0.9**self.t), self.v / (1 - 0.999**self.t)
        param += self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)


def _softmax(logits: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    z = logits if valid is None else np.where(valid, logits, -np.inf)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of a [..., options] probability array (inverse CDF)."""
    u = rng.random(probs.shape[:-1] + (1,))
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)


def _score(choice: np.ndarray, p: np.ndarray, advantage: np.ndarray, entropy: float) -> np.ndarray:
    """Per-sample gradient of advantage · log p[choice] + entropy · H(p) with respect to the logits:
    ∂ log softmax(z)[c] / ∂z = onehot(c) - p and ∂H/∂z = -p·(log p + H) (zero on masked options, where p = 0)."""
    onehot = (choice[..., None] == np.arange(p.shape[-1])).astype(np.float64)
    logp = np.log(np.maximum(p, 1e-30))
    h_grad = -p * (logp + (-(p * logp).sum(axis=-1, keepdims=True)))
    adv = advantage.reshape(advantage.shape + (1,) * (p.ndim - 1))
    return (onehot - p) * adv + entropy * h_grad


def _centred_rank(reward: np.ndarray) -> np.ndarray:
    """Each reward's rank among them, scaled to [-0.5, 0.5] (0 for a single one)."""
    return np.argsort(np.argsort(reward)) / max(len(reward) - 1, 1) - 0.5 * (len(reward) > 1)


def _kinds(table: Pricer) -> np.ndarray:
    """Kind of each layer (a heterogeneous table's groups share the model's kinds)."""
    kind = getattr(table, "kind", None)
    return np.asarray(kind if kind is not None else table.tables[0].kind, dtype=np.int64)  # type: ignore[attr-defined]


def search_policy_gradient(space: PlanSpace, options: PolicyGradientOptions = PolicyGradientOptions()) -> Tracker:
    rng = np.random.default_rng(options.seed)
    tracker = Tracker()
    tables, n = space.tables, max(1, min(options.batch, options.evaluations))  # a budget below one batch: one batch
    bases, layers = len(tables), space.num_layers
    stages = np.array([t.num_stages for t in tables])
    kinds = np.stack([_kinds(t) for t in tables])  # [base, layer]
    evens = np.zeros((bases, space.num_cuts + 2), np.int64)
    for b, t in enumerate(tables):
        evens[b, : t.num_stages + 1] = uniform_bounds(layers, t.num_stages)
    widths = np.array([-(-layers // t.num_stages) for t in tables])  # one even stage's layers, per base
    w = int(widths.max())
    offsets_range = np.arange(-w, w + 1)
    base_logits = np.zeros(bases)
    scale = np.maximum(1.0, options.offset_scale * widths)
    size_logits = np.broadcast_to((-np.abs(offsets_range) / scale[:, None])[:, None, :],
                                  (bases, max(space.num_cuts, 1), 2 * w + 1)).copy()  # [base, stage, offset + w]
    rec_logits = np.zeros((bases, space.num_cuts + 1, int(kinds.max()) + 1, NUM_OPTIONS))
    params = (base_logits, size_logits, rec_logits)
    adam = [_Adam(x.shape, options.learning_rate) for x in params]
    rows = np.arange(n)
    best_tps = 0.0
    while tracker.evaluations + n <= options.evaluations:
        p_base = _softmax(base_logits)
        base = _sample(np.broadcast_to(p_base, (n, bases)), rng)
        pp = stages[base]
        # stage sizes, one after another, each offset masked to leave every later stage a layer
        bounds = np.zeros((n, space.num_cuts + 2), np.int64)
        size_choice = np.zeros((n, size_logits.shape[1]), np.int64)
        size_p = np.zeros((n,) + size_logits.shape[1:])
        size_active = np.zeros((n, size_logits.shape[1]), bool)
        for k in range(space.num_cuts):
            active = k < pp - 1
            left, stages_left = layers - bounds[:, k], np.maximum(pp - k, 1)
            share = np.floor(left / stages_left + 0.5).astype(np.int64)
            size = share[:, None] + offsets_range
            valid = (size >= 1) & (size <= (left - stages_left + 1)[:, None])
            valid &= np.abs(offsets_range) <= widths[base][:, None]
            p = _softmax(size_logits[base, k], valid)
            c = _sample(p, rng)
            size_choice[:, k], size_p[:, k], size_active[:, k] = c, p, active
            bounds[:, k + 1] = np.where(active, bounds[:, k] + size[rows, c], bounds[:, k])
        bounds[rows, pp] = layers
        stage_of_layer = (np.arange(layers)[None, :, None] >= bounds[:, None, 1:-1]).sum(axis=2)
        stage_of_layer = np.minimum(stage_of_layer, pp[:, None] - 1)  # [n, layer]
        layer_kind = kinds[base]
        p_rec = _softmax(rec_logits[base[:, None], stage_of_layer, layer_kind])  # [n, layer, option]
        rec_choice = _sample(p_rec, rng)
        offsets = np.where(np.arange(space.num_cuts) < (pp - 1)[:, None],
                           bounds[:, 1:-1] - evens[base, 1:-1], 0)
        fit, tps = space.fitness(base, offsets, rec_choice, tracker)
        best_tps = max(best_tps, float(tps.max()))
        reward = np.where(tps > 0, tps / max(best_tps, 1e-30), fit)
        advantage = _centred_rank(reward)
        # the choices made after the base are ranked among the plans of the same base (a per-base baseline)
        within = np.zeros(n)
        for b in np.unique(base):
            same = np.flatnonzero(base == b)
            within[same] = _centred_rank(reward[same])
        grads = [np.zeros_like(x) for x in params]
        grads[0] = _score(base, np.broadcast_to(p_base, (n, bases)), advantage, options.base_entropy).sum(axis=0) / n
        g_size = _score(size_choice, size_p, within, options.entropy) * size_active[..., None]
        np.add.at(grads[1], (base[:, None], np.arange(size_logits.shape[1])[None, :]), g_size / n)
        g_rec = _score(rec_choice, p_rec, within, options.entropy)
        np.add.at(grads[2], (base[:, None], stage_of_layer, layer_kind), g_rec / n)
        for opt, param, grad in zip(adam, params, grads):
            opt.step(param, grad)
    return tracker
