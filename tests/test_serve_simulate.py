"""The scheduler simulation against the steady-state model, and the queueing behaviour it must show."""

from __future__ import annotations

import numpy as np
import pytest

from meshplan.errors import PlanError
from meshplan.serve.capacity import capacity
from meshplan.serve.cost import iteration_model
from meshplan.serve.deployment import Deployment, DeploymentTable
from meshplan.serve.efficiency import default_serving_efficiency
from meshplan.serve.simulate import simulate
from meshplan.serve.steady import steady_state
from meshplan.serve.workload import LatencyTarget, ServeWorkload
from meshplan.specs import load_gpu, load_model, make_cluster

EFF = default_serving_efficiency()


def _setup(workload: ServeWorkload, **kw: object):  # type: ignore[no-untyped-def]
    model, gpu = load_model("Llama-3.1-8B"), load_gpu("H100")
    dep = Deployment(precision="fp8", kv_dtype="fp8", **kw)  # type: ignore[arg-type]
    t = DeploymentTable.of([dep])
    cap = capacity(model, gpu, t, EFF.memory_fraction, EFF.runtime_bytes)
    it = iteration_model(model, make_cluster(gpu, dep.gpus_per_instance), t, EFF, "vllm")
    return dep, t, cap, it


def _sim(workload: ServeWorkload, n: int = 300, **kw: object):  # type: ignore[no-untyped-def]
    dep, _, cap, it = _setup(workload, **kw)
    return simulate(it, workload, kv_tokens=float(cap.kv_tokens[0]), max_batch=dep.max_batch,
                    chunk_tokens=dep.chunk_tokens, replicas=dep.replicas, num_requests=n)


def test_closed_loop_simulation_agrees_with_steady_state() -> None:
    # Two algorithms for the same closed loop (staggered clients, burst 0): mean TPOT and throughput agree.
    w = ServeWorkload(isl=512, osl=256, concurrency=16)
    dep, t, cap, it = _setup(w)
    fig = steady_state(it, w, cap.max_sequences(640.0), t.max_batch, t.chunk_tokens, t.replicas)
    sim = simulate(it, w, kv_tokens=float(cap.kv_tokens[0]), max_batch=dep.max_batch, chunk_tokens=dep.chunk_tokens,
                   replicas=1, num_requests=400)
    assert float(np.mean(sim.tpot_s)) == pytest.approx(float(fig.tpot_s[0]), rel=0.1)
    assert sim.output_tokens_per_s == pytest.approx(float(fig.output_tokens_per_s[0]), rel=0.1)


def test_closed_loop_ttft_agrees_with_steady_state() -> None:
    # Two algorithms for one benchmark run with a light prompt load: clients send their first requests together,
    # later ones restart after a varying overhead. The simulation plays it out request by request, steady.py
    # prices it in closed form; mean TTFT agrees within 25%.
    w = ServeWorkload(isl=512, osl=256, concurrency=16, num_requests=400)
    dep, t, cap, it = _setup(w)
    overhead = EFF.request_overhead_for("vllm")
    fig = steady_state(it, w, cap.max_sequences(640.0), t.max_batch, t.chunk_tokens, t.replicas, "continuous", overhead)
    sim = simulate(it, w, kv_tokens=float(cap.kv_tokens[0]), max_batch=dep.max_batch, chunk_tokens=dep.chunk_tokens,
                   replicas=1, request_overhead_s=overhead, num_requests=w.num_requests)
    assert float(np.mean(sim.ttft_s)) == pytest.approx(float(fig.ttft_s[0]), rel=0.25)


def test_first_wave_weighs_less_in_longer_runs() -> None:
    # The synchronised first wave: 32 prompts of 4096 tokens, g = 8192 // 4096 = 2 per iteration, so 16 groups;
    # a prompt waits for the other one of its iteration and for (16 - 1) / 2 groups of 2 ahead on average:
    # 1 + 15 = 16 prefills. Its weight is concurrency / requests, so a run of one wave has a longer mean TTFT
    # than a run of 20 waves, by (1 - 1/20) x that queue.
    short, long = (ServeWorkload(isl=4096, osl=64, concurrency=32, num_requests=n) for n in (32, 640))
    _, t, cap, it = _setup(short)
    seq_cap = cap.max_sequences(4096 + 32.0)
    one, many = (steady_state(it, w, seq_cap, t.max_batch, t.chunk_tokens, t.replicas) for w in (short, long))
    one_prefill = float(it.time(0.0, 0.0, 4096.0, 2048.0)[0] - it.time(0.0, 0.0, 0.0, 0.0)[0])
    assert float(one.ttft_s[0] - many.ttft_s[0]) == pytest.approx((1.0 - 0.05) * 16 * one_prefill, rel=1e-6)


def test_a_warmup_of_one_request_per_client_removes_the_first_wave() -> None:
    # Same run as above (32 clients, 640 measured requests): a warm-up of 32 requests leaves the first wave's
    # 16-prefill queue unmeasured, (32 / 640) x 16 prefills less; a warm-up of 16 leaves half of it.
    base = ServeWorkload(isl=4096, osl=64, concurrency=32, num_requests=640)
    _, t, cap, it = _setup(base)
    seq_cap = cap.max_sequences(4096 + 32.0)
    cold, half, warm = (steady_state(it, base.model_copy(update={"warmup_requests": k}), seq_cap, t.max_batch,
                                     t.chunk_tokens, t.replicas) for k in (0, 16, 32))
    one_prefill = float(it.time(0.0, 0.0, 4096.0, 2048.0)[0] - it.time(0.0, 0.0, 0.0, 0.0)[0])
    assert float(cold.ttft_s[0] - warm.ttft_s[0]) == pytest.approx(0.05 * 16 * one_prefill, rel=1e-6)
    assert float(cold.ttft_s[0] - half.ttft_s[0]) == pytest.approx(0.025 * 16 * one_prefill, rel=1e-6)
    # the simulation measures as many requests as asked and leaves the warm-up's out: the synchronised first
    # wave (32 prompts at once) is what raises the cold run's mean TTFT
    sim_cold = _sim(base.model_copy(update={"num_requests": 64}), n=64)
    sim_warm = _sim(base.model_copy(update={"num_requests": 64, "warmup_requests": 32}), n=64)
    assert len(sim_warm.ttft_s) == 64
    assert float(np.mean(sim_warm.ttft_s)) < float(np.mean(sim_cold.ttft_s))


def test_offline_run_within_the_batch_limit_is_one_in_flight_batched_wave() -> None:
    # 8 prompts of 2048 tokens, all at once, batch limit 1024: one wave. 16384 prompt tokens fill G = 2
    # iterations of 8192; with osl 2 each request has one more token: the first group's comes in the second
    # prompt iteration (mixed), the second group's in a decode-only step, so TPOT = (T_mix + T_dec) / 2 with
    # T_mix = time(4 decoding, 8192 prompt tokens) and T_dec = time(8 decoding).
    w = ServeWorkload(isl=2048, osl=2, request_rate=float("inf"), num_requests=8)
    _, t, cap, it = _setup(w)
    fig = steady_state(it, w, cap.max_sequences(2049.0), t.max_batch, t.chunk_tokens, t.replicas)
    ctx = 2048 + 1.0
    t_mix = float(it.time(4.0, ctx, 8192.0, 1024.0)[0])
    t_dec = float(it.time(8.0, ctx, 0.0, 0.0)[0])
    assert float(fig.tpot_s[0]) == pytest.approx((t_mix + t_dec) / 2.0, rel=1e-9)
    # the run: 2 prompt iterations then one decode step; 8 requests x 2 tokens over it
    assert float(fig.output_tokens_per_s[0]) == pytest.approx(8 * 2 / (2 * t_mix + t_dec), rel=1e-9)


def test_ttft_prices_the_last_chunk_by_its_tokens() -> None:
    # A prompt one token longer than the chunk budget takes two iterations, but the second carries one token:
    # TTFT must not double (it did when every chunk was priced as a full one).
    w_fit, w_over = (ServeWorkload(isl=isl, osl=64, concurrency=1) for isl in (8191, 8193))
    _, t, cap, it = _setup(w_fit)
    fits, over = (steady_state(it, w, cap.max_sequences(9000.0), t.max_batch, t.chunk_tokens, t.replicas)
                  for w in (w_fit, w_over))
    assert float(over.ttft_s[0]) == pytest.approx(float(fits.ttft_s[0]), rel=0.05)


def test_poisson_tails_and_load() -> None:
    light = _sim(ServeWorkload(isl=512, osl=128, request_rate=2.0))
    heavy = _sim(ServeWorkload(isl=512, osl=128, request_rate=60.0))
    for sim in (light, heavy):
        assert sim.percentile("ttft", 99) >= sim.percentile("ttft", 90) >= sim.percentile("ttft", 50)
    # more load: longer TPOT (bigger batches) and longer queues before the first token
    assert heavy.percentile("tpot", 50) > light.percentile("tpot", 50)
    assert heavy.percentile("ttft", 90) > light.percentile("ttft", 90)
    # a light load is served: output rate = offered rate x osl within the Poisson noise of 300 requests
    assert light.output_tokens_per_s == pytest.approx(2.0 * 128, rel=0.2)


def test_batch_limit_queues_requests() -> None:
    # With at most 4 sequences in flight, 32 closed-loop clients wait for a slot: TTFT grows by the queue,
    # roughly (32 / 4 - 1) request lifetimes, while TPOT stays that of a batch of 4.
    free = _sim(ServeWorkload(isl=256, osl=64, concurrency=4), n=200, max_batch=4)
    queued = _sim(ServeWorkload(isl=256, osl=64, concurrency=32), n=200, max_batch=4)
    lifetime = float(np.mean(free.ttft_s + 63 * free.tpot_s))
    assert float(np.mean(queued.tpot_s)) == pytest.approx(float(np.mean(free.tpot_s)), rel=0.15)
    assert float(np.mean(queued.ttft_s)) == pytest.approx(7 * lifetime, rel=0.25)


def test_offline_ttft_grows_with_the_number_of_requests() -> None:
    small = _sim(ServeWorkload(isl=256, osl=64, request_rate=float("inf")), n=100, max_batch=16)
    large = _sim(ServeWorkload(isl=256, osl=64, request_rate=float("inf")), n=400, max_batch=16)
    assert float(np.mean(large.ttft_s)) > 2.5 * float(np.mean(small.ttft_s))


def test_latency_target_parsing() -> None:
    t = LatencyTarget.parse("2s@p90", "--ttft")
    assert (t.limit_s, t.percentile) == (2.0, 90.0)
    assert LatencyTarget.parse("50ms@p99", "--tpot").limit_s == pytest.approx(0.05)
    assert LatencyTarget.parse("120ms", "--tpot").percentile == 50.0
    with pytest.raises(PlanError, match="--ttft target"):
        LatencyTarget.parse("fast", "--ttft")


def test_trace_replay_and_histograms(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from meshplan.serve.workload import histogram_mean, load_histogram, load_trace, trace_workload

    # Requests 10 s apart never meet: each TTFT is one prompt's prefill (plus half... no: it starts at once),
    # the same for every request of the same length; the trace's rate and mean lengths carry over.
    trace_csv = tmp_path / "trace.csv"
    trace_csv.write_text("arrival_s,isl,osl\n" + "".join(f"{10.0 * i},{256 if i % 2 else 512},32\n" for i in range(20)))
    work = trace_workload(load_trace(trace_csv))
    assert work.request_rate == pytest.approx(19 / 190.0) and work.isl == 384 and work.osl == 32
    sim = _sim(work, n=20)
    assert len(sim.ttft_s) == 20
    short, long = sim.ttft_s[1::2], sim.ttft_s[0::2]
    assert np.ptp(short) == pytest.approx(0.0, abs=1e-12) and np.ptp(long) == pytest.approx(0.0, abs=1e-12)
    assert long[0] > short[0]
    hist_csv = tmp_path / "isl.csv"
    hist_csv.write_text("tokens,count\n100,3\n400,1\n")
    hist = load_histogram(hist_csv, "isl histogram")
    assert histogram_mean(hist) == pytest.approx(175.0)  # (3 x 100 + 400) / 4
    with pytest.raises(PlanError, match="is not 'tokens,count'"):
        bad = tmp_path / "bad.csv"
        bad.write_text("100;3\n")
        load_histogram(bad, "isl histogram")


def test_closed_loop_with_more_clients_than_requests_sends_them_all_at_once() -> None:
    # 64 clients and 16 simulated requests: every request is in the first wave, exactly as with 16 clients for
    # 16 requests (same seed, so the same lengths and overheads). It used to index past the request list.
    many = _sim(ServeWorkload(isl=512, osl=64, concurrency=64), n=16)
    exact = _sim(ServeWorkload(isl=512, osl=64, concurrency=16), n=16)
    assert len(many.ttft_s) == 16
    assert np.array_equal(many.ttft_s, exact.ttft_s) and np.array_equal(many.tpot_s, exact.tpot_s)


def test_lockstep_clients_share_prefill_iterations() -> None:
    # 16 clients, 1024-token prompts, an 8192-token budget: g = 8 prompts per iteration. With every client in
    # lockstep the 16 arrive together each wave: a prompt waits for the 7 others of its iteration and, on average,
    # for (2 - 1) / 2 groups of 8 ahead: 7 + 4 = 11 prefills. With half in lockstep, 8 arrive together: 7
    # prefills for the half that does. Both weigh the later waves, 1 - 16 / 320 of the run.
    w = ServeWorkload(isl=1024, osl=256, concurrency=16, num_requests=320)
    _, t, cap, it = _setup(w)
    one_prefill = float(it.time(0.0, 0.0, 1024.0, 512.0)[0] - it.time(0.0, 0.0, 0.0, 0.0)[0])
    ttft = {s: float(steady_state(it, w, cap.max_sequences(1152.0), t.max_batch, t.chunk_tokens, t.replicas,
                                  "continuous", 0.0, s).ttft_s[0]) for s in (0.0, 0.5, 1.0)}
    assert ttft[1.0] - ttft[0.0] == pytest.approx(0.95 * 11 * one_prefill, rel=1e-6)
    assert ttft[0.5] - ttft[0.0] == pytest.approx(0.95 * 0.5 * 7 * one_prefill, rel=1e-6)


def test_lockstep_simulation_agrees_with_steady_state() -> None:
    # Two algorithms for clients that restart in lockstep: the simulation replays the waves request by request;
    # mean TTFT agrees with the closed form within 25%, and lockstep costs the simulated run over twice the TTFT
    # of clients that leave the first wave at random phases.
    w = ServeWorkload(isl=1024, osl=256, concurrency=16, num_requests=320)
    dep, t, cap, it = _setup(w)
    fig = steady_state(it, w, cap.max_sequences(1152.0), t.max_batch, t.chunk_tokens, t.replicas, "continuous",
                       0.02, 1.0)
    locked, spread = (simulate(it, w, kv_tokens=float(cap.kv_tokens[0]), max_batch=dep.max_batch,
                               chunk_tokens=dep.chunk_tokens, replicas=1, request_overhead_s=0.02,
                               num_requests=w.num_requests, lockstep=s) for s in (1.0, 0.0))
    assert float(np.mean(locked.ttft_s)) == pytest.approx(float(fig.ttft_s[0]), rel=0.25)
    assert float(np.mean(locked.ttft_s)) > 2.0 * float(np.mean(spread.ttft_s))
