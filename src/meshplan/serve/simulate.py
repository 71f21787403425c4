"""Discrete-event simulation of one engine instance's continuous-batching scheduler with chunked prefill.

Iteration-level, as vLLM / SGLang / TensorRT-LLM schedule (Yu et al. 2022, Orca; Agrawal et al. 2024,
Sarathi-Serve for chunked prefill): each iteration admits waiting requests while the batch limit and the KV
cache allow (first come, first served), gives every decoding sequence one token, and fills the rest of the
token budget with prompt chunks. The iteration lasts `IterationModel.time` of its load. Requests arrive
Poisson (open loop), all at once (offline), as others finish (closed loop), or as a replayed trace; lengths
are fixed, gamma-spread around their means, or drawn from a histogram. Percentiles of TTFT and
TPOT come from the simulated requests, so tails under load are priced by the scheduler, not by averages.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from meshplan.serve.cost import IterationModel
from meshplan.serve.workload import ServeWorkload
from meshplan.specs.model import windowed_context, windowed_prompt_context

PERCENTILES = (50.0, 90.0, 99.0)
MAX_ITERATIONS = 200_000  # safety bound on one simulation


@dataclass(frozen=True)
class SimResult:
    ttft_s: np.ndarray
    """Per completed request."""
    tpot_s: np.ndarray
    output_tokens_per_s: float
    """Per instance, over the measured window."""
    mean_batch: float

    def percentile(self, metric: str, pct: float) -> float:
        values = self.ttft_s if metric == "ttft" else self.tpot_s
        return float(np.percentile(values, pct)) if len(values) else math.nan


class _Scalar:
    """The iteration time of one deployment as plain float arithmetic (fast inside the event loop)."""

    def __init__(self, it: IterationModel) -> None:
        f = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in it.__dict__.items()}
        self.f = f

    def __call__(self, d: float, c: float, p: float, cp: float) -> float:
        f = self.f
        tokens = d + p
        touched = 1.0 - (1.0 - f["expert_pick"]) ** max(tokens / f["pp"], 1.0) if f["expert_pick"] else 0.0
        linear = (max(tokens * f["linear_s_per_token"] + d * f["lm_head_s_per_token"], f["dense_weights_s"])
                  + max(tokens * f["expert_linear_s_per_token"],
                        f["expert_weights_s"] * touched + tokens * f["moe_act_s_per_token"]))
        if f["windowed_share"]:  # sliding-window layers attend at most their window (see IterationModel.terms)
            c = windowed_context(c, f["sliding_window"], f["windowed_share"])
            cp = windowed_prompt_context(cp, f["sliding_window"], f["windowed_share"])
        attention = max((d * c + p * cp) * f["attn_s_per_token_ctx"], d * c * f["kv_s_per_token_ctx"])
        return (f["fixed_s"] + d * f["per_sequence_s"] + linear + attention
                + f["tp_latency_s"] + tokens * f["tp_s_per_token"] + f["ep_latency_s"] + tokens * f["ep_s_per_token"]
                + f["pp_latency_s"] + tokens * f["pp_s_per_token"])


def _lengths(rng: np.random.Generator, mean: int, cv: float, n: int) -> np.ndarray:
    if cv <= 0:
        return np.full(n, mean, dtype=np.int64)
    shape = 1.0 / cv**2  # gamma with the given mean and coefficient of variation
    return np.maximum(1, np.round(rng.gamma(shape, mean / shape, n))).astype(np.int64)


def _sample(rng: np.random.Generator, hist: tuple[tuple[int, float], ...], n: int) -> np.ndarray:
    tokens = np.array([t for t, _ in hist], dtype=np.int64)
    weights = np.array([w for _, w in hist], dtype=np.float64)
    return np.asarray(rng.choice(tokens, size=n, p=weights / weights.sum()))


def simulate(it: IterationModel, w: ServeWorkload, *, kv_tokens: float, max_batch: int, chunk_tokens: int,
             replicas: int, request_overhead_s: float = 0.0, num_requests: int = 400, seed: int = 0,
             lockstep: float = 0.0) -> SimResult:
    """Simulate one instance (traffic split evenly over `replicas`); `it` must hold one deployment.

    In a closed loop each client, with probability `lockstep`, restarts every request as soon as the last one
    ends (the mean overhead, no jitter); the others leave the first wave after a random pause and then restart
    after a varying overhead (see `steady_state`)."""
    step = _Scalar(it)
    rng = np.random.default_rng(seed)
    # A warm-up runs in the same loop before the measured requests and is left out of the figures.
    warmup = 0 if w.trace else math.ceil(w.warmup_requests / replicas)
    n = num_requests + warmup
    if w.trace:  # replay: this instance gets every replicas-th request (round robin)
        mine = w.trace[::replicas][:n]
        n = len(mine)
        raw_isl = np.array([r[1] for r in mine], dtype=np.float64)
        osl = np.array([r[2] for r in mine], dtype=np.int64)
    else:
        raw_isl = _sample(rng, w.isl_histogram, n) if w.isl_histogram else _lengths(rng, w.isl, w.length_cv, n)
        osl = _sample(rng, w.osl_histogram, n) if w.osl_histogram else _lengths(rng, w.osl, w.length_cv, n)
    isl = np.maximum(1, np.round(raw_isl * (1.0 - w.prefix_hit))).astype(np.int64)
    arrival = np.zeros(n)
    closed = w.concurrency is not None
    in_flight = max(1, round(w.concurrency / replicas)) if w.concurrency is not None else 0
    if w.trace:
        arrival = np.array([r[0] for r in mine]) - w.trace[0][0]
    elif not closed and not w.offline:
        assert w.request_rate is not None
        arrival = np.cumsum(rng.exponential(replicas / w.request_rate, n))
    elif closed:
        # Benchmark clients send their first requests together (a synchronised first wave, as steady.py prices
        # it); each later request is released when an earlier one finishes.
        arrival[in_flight:] = math.inf
    # The per-request overhead (client, HTTP, tokenisation) varies: exponential around its mean in a closed loop.
    # Requests enter the queue in release order.
    overhead = request_overhead_s * (rng.exponential(1.0, n) if closed else np.ones(n))
    if closed:
        overhead[:in_flight] = np.sort(overhead[:in_flight])
    sent = arrival.copy()  # when the client sends (TTFT counts from here)
    arrival = arrival + overhead

    first = np.full(n, math.nan)
    done = np.full(n, math.nan)
    isl_of, osl_of = isl.tolist(), osl.tolist()
    # KV tokens a request reserves (whole prompt and output; sliding-window layers keep only their window)
    held_of = windowed_context((isl + osl).astype(np.float64), step.f["sliding_window"],
                               step.f["windowed_share"]).tolist()
    arrival_of = arrival.tolist()
    prefilled = [0] * n
    waiting: deque[int] = deque()
    prefilling: list[int] = []  # admitted, prompt not finished (first come, first served)
    num_decoding = 0
    ctx_sum = 0.0  # sum of the contexts of the decoding sequences
    finish_at: dict[int, list[int]] = {}  # iteration number -> sequences that emit their last token then
    # requests sent so far (a closed loop sends one as one finishes; with more clients than simulated requests,
    # every request is in the first wave)
    released = min(in_flight, n) if closed else n
    pending = [(arrival_of[r], r) for r in range(released)]  # sent, not yet arrived: a heap by arrival time
    heapq.heapify(pending)
    clock = 0.0
    life_sum, lives = 0.0, 0  # send-to-last-token times of the completed requests
    client_of = list(range(released)) if closed else []  # closed loop: the client that sent each request
    locked = [False] * len(client_of)  # clients that restart in lockstep
    kv_used = 0.0
    batch_sum = 0.0
    iterations = 0
    while iterations < MAX_ITERATIONS:
        while pending and pending[0][0] <= clock:
            waiting.append(heapq.heappop(pending)[1])
        in_batch = len(prefilling) + num_decoding
        while waiting and in_batch < max_batch and kv_used + held_of[waiting[0]] <= kv_tokens:
            r = waiting.popleft()
            prefilling.append(r)
            kv_used += held_of[r]
            in_batch += 1
        if in_batch == 0:
            if waiting or not pending:  # a request that cannot fit the KV cache, or all done
                break
            clock = max(clock, pending[0][0])
            continue
        d = float(num_decoding)
        ctx = ctx_sum / num_decoding if num_decoding else 0.0
        budget = max(chunk_tokens - num_decoding, 0)
        chunks: list[tuple[int, int]] = []
        for r in prefilling:
            if budget <= 0:
                break
            take = min(isl_of[r] - prefilled[r], budget)
            chunks.append((r, take))
            budget -= take
        p = float(sum(t for _, t in chunks))
        cp = sum(prefilled[r] + t / 2.0 for r, t in chunks) / len(chunks) if chunks else 0.0
        clock += step(d, ctx, p, cp)
        iterations += 1
        batch_sum += in_batch
        ctx_sum += num_decoding  # every decoding sequence gained a token
        for r, t in chunks:
            prefilled[r] += t
            if prefilled[r] >= isl_of[r]:  # the iteration that ends the prompt also emits the first token
                first[r] = clock
                prefilling.remove(r)
                if osl_of[r] <= 1:
                    finish_at.setdefault(iterations, []).append(r)
                else:
                    num_decoding += 1
                    ctx_sum += isl_of[r] + 1
                    finish_at.setdefault(iterations + osl_of[r] - 1, []).append(r)
        # Clients leave the synchronised first wave at random phases, as steady.py assumes (later requests arrive
        # spread out): a first-wave request's successor is sent after a pause drawn uniformly over one request's
        # life, except, with probability `lockstep`, at once with the others that finished in its iteration.
        # Fixed lengths then keep the spacing, and the groups.
        for r in finish_at.pop(iterations, ()):
            done[r] = clock
            life_sum += clock - sent[r]
            lives += 1
            kv_used -= held_of[r]
            if osl_of[r] > 1:
                num_decoding -= 1
                ctx_sum -= isl_of[r] + osl_of[r]
            if closed and released < n:
                client = client_of[r]
                client_of.append(client)
                if r < in_flight:  # the client's first restart decides whether it stays in lockstep
                    locked[client] = lockstep > 0.0 and bool(rng.random() < lockstep)
                if locked[client]:
                    overhead[released] = request_overhead_s
                pause = 0.0 if locked[client] or r >= in_flight else float(rng.uniform(0.0, life_sum / lives))
                sent[released] = clock + pause
                arrival_of[released] = float(sent[released] + overhead[released])
                arrival[released] = arrival_of[released]
                heapq.heappush(pending, (arrival_of[released], released))
                released += 1
        if released >= n and not pending and not waiting and not prefilling and num_decoding == 0 and not finish_at:
            break
    ok = ~np.isnan(done)
    ok[:warmup] = False
    ttft = first[ok] - sent[ok]
    tpot = (done[ok] - first[ok]) / np.maximum(osl[ok] - 1, 1)
    # Throughput: closed loop over the middle of the run (completions 10%..90%, past ramp-up, before drain);
    # open loop and offline over the whole run, first arrival to last completion.
    order = np.argsort(done[ok])
    finish = done[ok][order]
    if closed and len(finish) >= 10:
        lo, hi = int(0.1 * len(finish)), int(0.9 * len(finish))
        tokens = float(np.sum(osl[ok][order][lo + 1:hi + 1]))
        window = finish[hi] - finish[lo]
    else:
        tokens = float(np.sum(osl[ok]))
        window = (finish[-1] - float(np.min(sent[ok]))) if len(finish) else 0.0
    rate = tokens / window if window > 0 else math.nan
    return SimResult(ttft, tpot, rate, batch_sum / max(iterations, 1))
