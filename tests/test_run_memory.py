"""CPU peak memory of one step, from the profiler's allocation records (what `meshplan run` reports on CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from meshplan.run.memory import cpu_step_peak_bytes  # noqa: E402


def test_a_step_peak_holds_the_gradients_and_the_saved_activations() -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024))
    x = torch.randn(512, 1024)

    def step() -> None:
        mlp(x).square().mean().backward()

    # Gradients: (1024*4096 + 4096) + (4096*1024 + 1024) = 8,393,728 fp32 numbers = 33.57 MB, all alive at the
    # end of backward. One hidden activation: 512 x 4096 fp32 = 8.39 MB; forward saves the GELU input and output,
    # backward makes their gradients: the peak lies between grads + 1 and grads + 6 hidden activations.
    grads = 8_393_728 * 4
    hidden = 512 * 4096 * 4
    peak = cpu_step_peak_bytes(step)
    assert grads + hidden <= peak <= grads + 6 * hidden
