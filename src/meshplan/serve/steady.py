"""Steady-state (mean) figures of continuous batching, closed form, vectorised over deployments.

An instance runs B = min(requests in flight, batch limit, sequences whose KV cache fits) sequences. In steady
state every iteration carries B decoding sequences (mean context isl + osl/2); the prompts of joining requests,
B·prompt/osl tokens per iteration on average, come as chunks (up to the chunked-prefill budget) in a share of
the iterations. TPOT is the mean iteration time (others' prefill chunks slow the decode steps they share,
which is what engines measure). TTFT is the request's own prefill, in chunks, plus
waiting for admission: in a closed loop with more requests than B, Little's law gives the time in system
N / X (X: completions per second), and TTFT is what remains after the decode phase. Open-loop rates come from
the same fixed point (B = rate · time in system) while the instance keeps up.
With pipeline parallelism a round lasts at least pp times its heaviest micro-batch (below).
A static batch (all prompts in one iteration, then decode together; splitwise-sim's profiles) is a
separate scheduler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from meshplan.serve.cost import IterationModel
from meshplan.serve.workload import ServeWorkload

Scheduler = Literal["continuous", "static"]


@dataclass(frozen=True)
class SteadyFigures:
    """Mean figures per deployment (arrays)."""

    ttft_s: np.ndarray
    tpot_s: np.ndarray
    output_tokens_per_s: np.ndarray
    """Per instance."""
    batch: np.ndarray
    """Sequences in flight per instance."""
    prefill_tokens_per_iteration: np.ndarray
    overloaded: np.ndarray
    """The offered rate exceeds what the instance completes (queue grows)."""


def _mean_context(w: ServeWorkload) -> float:
    return w.isl + w.osl / 2.0


def steady_state(it: IterationModel, w: ServeWorkload, seq_cap: np.ndarray, max_batch: np.ndarray,
                 chunk: np.ndarray, replicas: np.ndarray, scheduler: Scheduler = "continuous",
                 request_overhead_s: float = 0.0, lockstep: float = 0.0) -> SteadyFigures:
    """Mean TTFT, TPOT and throughput of each deployment for workload `w`.

    `request_overhead_s` is added to every TTFT (API server, tokenisation). A closed loop is a benchmark run of
    `w.num_requests` requests whose clients all send their first request at once: that first wave's prompts
    queue behind each other (the i-th waits for i - 1 prefills, (B - 1) / 2 on average); each request then
    restarts when its predecessor ends, after a client/server overhead that varies from request to request,
    so later waves arrive spread out and wait for no prompt but their own. Averaged over the run, the first
    wave weighs concurrency / num_requests, less the part of it a warm-up (`w.warmup_requests`) leaves unmeasured.

    Prompts that reach the scheduler together share iterations: as many whole prompts as the token budget
    holds (g = chunk // prompt, at least 1, at most B) go into one iteration, and each of them gets its first
    token when that iteration ends, so it waits for the g - 1 others' prefill as well (Orca's iteration-level
    batching, Yu et al. 2022 §4). The first wave is made of such groups, the i-th waiting for the i - 1 before it.
    Clients then leave the first wave at random phases, except that each restarts at once, with probability
    `lockstep`, when its request ends (a client that adds no pause; fixed-length requests that started together
    end together or one prefill apart). Fixed lengths keep both the spacing and the cohort: the lockstep
    clients, lockstep·B of them, arrive together every wave, a first wave of their own."""
    prompt = w.prefill_tokens
    ctx = _mean_context(w)
    cap = np.maximum(np.minimum(max_batch, seq_cap), 1.0)
    if w.concurrency is not None:
        in_flight = w.concurrency / replicas
    elif w.offline:  # all requests at once: no more in flight than the run has
        in_flight = np.full_like(cap, w.num_requests / replicas)
    else:
        in_flight = np.full_like(cap, np.inf)
    if scheduler == "static":
        b = np.minimum(in_flight, cap)
        ttft = it.time(0.0, 0.0, b * prompt, prompt / 2.0) + request_overhead_s
        tpot = it.time(b, ctx, 0.0, 0.0)
        rate = b * w.osl / (ttft + (w.osl - 1) * tpot)
        return SteadyFigures(ttft, tpot, rate, b, b * prompt, np.zeros_like(b, dtype=bool))

    def solve(b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        room = np.maximum(chunk - b, 1.0)
        own = np.minimum(prompt, room)  # prompt tokens one request puts in one iteration
        # Prompts arrive as chunks of `own` tokens, not spread thinly over every iteration: a fraction f of the
        # iterations carries one (B·prompt/osl prompt tokens per iteration on average), the rest decode only.
        # That keeps the roofline's max() and the experts touched right for both kinds of iteration.
        per_iter = b * prompt / w.osl
        share = np.minimum(per_iter / own, 1.0)
        load = np.where(share < 1.0, own, np.minimum(per_iter, room))
        # Pipeline: each of the pp micro-batches must pass all pp stages before its next iteration, so a round
        # lasts at least pp x its heaviest micro-batch, and a chunk is not split across micro-batches.
        p_round = np.maximum(load, it.pp * np.minimum(own, load))
        with_prompt = it.time(b, ctx, p_round, prompt / 2.0)
        tpot = share * with_prompt + (1.0 - share) * it.time(b, ctx, 0.0, 0.0)
        chunks = np.ceil(prompt / room)
        # The prompt's chunks: each iteration's own costs (weights, decodes, overheads) once per chunk, the
        # prompt's compute in proportion to its tokens (the last chunk carries only the remainder).
        decode_only = it.time(b, ctx, 0.0, 0.0)
        service_ttft = chunks * decode_only + prompt / own * (with_prompt - decode_only) + 0.5 * tpot + request_overhead_s
        # Prefill-bound: prompts need more iterations than the decodes last.
        life_iters = np.maximum(w.osl - 1.0, b * prompt / room - chunks)
        return tpot, service_ttft, life_iters

    if w.concurrency is not None or w.offline:
        b = np.minimum(in_flight, cap)
        tpot, service, life = solve(b)
        if w.concurrency is not None:
            # One prompt's own prefill compute; a group of g prompts shares an iteration (see the docstring).
            one_prefill = it.time(0.0, 0.0, prompt, prompt / 2.0) - it.time(0.0, 0.0, 0.0, 0.0)

            def wave(n: np.ndarray) -> np.ndarray:
                """Mean wait of n prompts sent together for the others' prefill: its own iteration's g - 1 and
                the groups ahead of it."""
                group = np.clip(np.floor(chunk / prompt), 1.0, np.maximum(n, 1.0))
                groups_ahead = (np.ceil(np.maximum(n, 1.0) / group) - 1.0) / 2.0
                return (group - 1.0 + groups_ahead * group) * one_prefill

            first_wave = min(max(w.concurrency - w.warmup_requests, 0) / w.num_requests, 1.0)
            service = service + first_wave * wave(b) + (1.0 - first_wave) * lockstep * wave(lockstep * b)
        completions = b / (service + life * tpot)  # requests/s per instance
        if w.offline:
            # All requests at once: they are served B at a time; the mean request waits for half the run.
            total = w.num_requests / replicas
            ttft = service + np.maximum(total - b, 0.0) / completions / 2.0
            # A run no larger than the batch limit is one wave, in-flight batched (Yu et al. 2022, Orca §4): the
            # prompts fill G iterations of `chunk` tokens; a request decodes from the iteration after its own
            # prompt, in iterations that still carry the later prompts (T_mix) until the last prompt is done,
            # then decode-only (T_dec). The g-th group's request has min(G - g, osl - 1) mixed steps.
            one_wave = total <= cap
            groups = np.maximum(np.ceil(total * prompt / chunk), 1.0)
            per_iter = np.minimum(chunk, total * prompt)
            t_mix = it.time(total / 2.0, ctx, per_iter, prompt / 2.0)
            t_dec = it.time(total, ctx, 0.0, 0.0)
            m = max(w.osl - 1.0, 1.0)
            k_max = groups - 1.0  # mixed steps of the first group
            mixed = np.where(k_max <= m, k_max / 2.0, (m * (m + 1.0) / 2.0 + (k_max - m) * m) / groups)
            ttft = np.where(one_wave, (groups + 1.0) / 2.0 * t_mix + request_overhead_s, ttft)
            tpot = np.where(one_wave, (mixed * t_mix + (m - mixed) * t_dec) / m, tpot)
            completions = np.where(one_wave, total / (groups * t_mix + m * t_dec), completions)
        else:
            time_in_system = np.maximum(in_flight / completions, service + life * tpot)
            ttft = time_in_system - life * tpot
        return SteadyFigures(ttft, tpot, completions * w.osl, b, np.minimum(b * prompt / w.osl, chunk), np.zeros_like(b, dtype=bool))

    assert w.request_rate is not None and not math.isinf(w.request_rate)
    lam = w.request_rate / replicas  # requests/s per instance
    b = np.ones_like(cap)
    for _ in range(60):  # fixed point b = λ·(time in system), damped
        tpot, service, life = solve(b)
        target = np.minimum(lam * (service + life * tpot), cap)
        b = 0.5 * b + 0.5 * np.maximum(target, 1.0)
    tpot, service, life = solve(b)
    completions = b / (service + life * tpot)
    overloaded = lam > completions * 1.001
    served = np.minimum(lam, completions)
    # Queueing before admission: an M/D/1-like wait on the admission slot when the batch is at its cap;
    # with an overload the queue grows over the run (half the run's excess, on average).
    rho = np.minimum(lam / np.maximum(completions, 1e-12), 0.999)
    wait = np.where(b >= cap - 0.5, rho / (2.0 * (1.0 - rho)) * (service + life * tpot) / cap, 0.0)
    run_s = w.num_requests / w.request_rate
    wait = np.where(overloaded, (1.0 - completions / lam) * run_s / 2.0, wait)
    return SteadyFigures(service + wait, tpot, served * w.osl, b, np.minimum(b * prompt / w.osl, chunk), overloaded)
