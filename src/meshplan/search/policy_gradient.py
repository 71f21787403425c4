"""REINFORCE (Williams 1992) over non-uniform plans, as in the device-placement work (Mirhoseini et al. 2017).

The policy is a product of independent categorical distributions, all logits learned: one over the base
strategies (the per-axis choice of dp, tp, pp, ... among the candidates), and for each base one per stage
boundary (its offset from the even split) and one per layer (its recomputation). Each iteration samples a batch
of plans, prices them in one cost-model call, and moves the logits (by Adam) along the score-function gradient
∇ log π(plan) · advantage, the advantage being the reward's rank within the batch (centred: the baseline).
Reward: tokens/s relative to the best plan seen so far when the plan fits, minus its memory overflow ratio
when it does not. The logits start at zero (a uniform policy): nothing of the uniform plans is given to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshplan.cost.nonuniform import NUM_OPTIONS
from meshplan.search.encoding import PlanSpace, Tracker


@dataclass(frozen=True)
class PolicyGradientOptions:
    batch: int = 32
    evaluations: int = 20_000
    """Budget: plans priced in all."""
    learning_rate: float = 0.02
    """Adam step size on the logits (Kingma & Ba 2015; beta1 0.9, beta2 0.999)."""
    entropy: float = 0.01
    """Weight of the policy's entropy in the objective (keeps it exploring)."""
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


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of a [..., options] probability array (inverse CDF)."""
    u = rng.random(probs.shape[:-1] + (1,))
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1)


def _entropy_gradient(p: np.ndarray) -> np.ndarray:
    logp = np.log(np.maximum(p, 1e-30))
    return -p * (logp + (-(p * logp).sum(axis=-1, keepdims=True)))


def _onehot(choice: np.ndarray, options: int) -> np.ndarray:
    return (choice[..., None] == np.arange(options)).astype(np.float64)


def search_policy_gradient(space: PlanSpace, options: PolicyGradientOptions = PolicyGradientOptions()) -> Tracker:
    rng = np.random.default_rng(options.seed)
    tracker = Tracker()
    bases, cuts, layers, width = len(space.tables), space.num_cuts, space.num_layers, 2 * space.max_offset + 1
    base_logits = np.zeros(bases)
    cut_logits = np.zeros((bases, cuts, width))
    rec_logits = np.zeros((bases, layers, NUM_OPTIONS))
    n = options.batch
    adam = [_Adam(x.shape, options.learning_rate) for x in (base_logits, cut_logits, rec_logits)]
    best_tps = 0.0
    while tracker.evaluations + n <= options.evaluations:
        p_base = _softmax(base_logits)
        base = _sample(np.broadcast_to(p_base, (n, bases)), rng)
        p_cut, p_rec = _softmax(cut_logits[base]), _softmax(rec_logits[base])  # [n, cuts, width], [n, layers, 3]
        cut_choice, rec_choice = _sample(p_cut, rng), _sample(p_rec, rng)
        fit, tps = space.fitness(base, cut_choice - space.max_offset, rec_choice, tracker)
        best_tps = max(best_tps, float(tps.max()))
        reward = np.where(tps > 0, tps / max(best_tps, 1e-30), fit)
        # Rank-based advantage in [-0.5, 0.5] (fitness shaping, Wierstra et al. 2014): robust to the scale of rewards.
        advantage = np.argsort(np.argsort(reward)) / max(n - 1, 1) - 0.5
        # ∂ log softmax(z)[c] / ∂z = onehot(c) - softmax(z), for each categorical factor; mean over the batch
        # plus an entropy bonus against early collapse: ∂H/∂z = -p·(log p + H)
        g_base = ((_onehot(base, bases) - p_base) * advantage[:, None]).sum(axis=0) / n
        g_base += options.entropy * _entropy_gradient(p_base)
        g_cut, g_rec = np.zeros_like(cut_logits), np.zeros_like(rec_logits)
        np.add.at(g_cut, base, ((_onehot(cut_choice, width) - p_cut) * advantage[:, None, None]
                                + options.entropy * _entropy_gradient(p_cut)) / n)
        np.add.at(g_rec, base, ((_onehot(rec_choice, NUM_OPTIONS) - p_rec) * advantage[:, None, None]
                                + options.entropy * _entropy_gradient(p_rec)) / n)
        for opt, param, grad in ((adam[0], base_logits, g_base), (adam[1], cut_logits, g_cut), (adam[2], rec_logits, g_rec)):
            opt.step(param, grad)
    return tracker
