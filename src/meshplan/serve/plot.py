"""Pareto plot of a serving search: output tokens/s per GPU against tokens/s per user (PNG or SVG)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from meshplan.errors import PlanError

if TYPE_CHECKING:
    from meshplan.serve.search import Candidate


def plot_pareto(all_points: list[Candidate], front: list[Candidate], chosen: Candidate | None, path: Path,
                title: str) -> None:
    """Write the plot; the format follows the suffix (.png or .svg)."""
    if path.suffix.lower() not in (".png", ".svg"):
        raise PlanError(f"--plot {str(path)!r} must end in .png or .svg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    ax.scatter([c.per_user for c in all_points], [c.per_gpu for c in all_points], s=6, color="0.75",
               label=f"{len(all_points):,} deployments that fit and keep up")
    ax.plot([c.per_user for c in front], [c.per_gpu for c in front], "o-", color="tab:blue", ms=4,
            label="Pareto frontier (within the mean targets)")
    for c in front[:: max(1, len(front) // 8)]:
        ax.annotate(c.label.rsplit(" b", 1)[0], (c.per_user, c.per_gpu), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    if chosen is not None:
        ax.scatter([chosen.per_user], [chosen.per_gpu], marker="*", s=140, color="tab:red", zorder=5,
                   label=f"chosen: {chosen.label}")
    ax.set_xlabel("output tokens/s per user (1 / TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise PlanError(f"cannot write --plot {str(path)!r}: {exc.strerror}; choose a writable path") from None
    finally:
        plt.close(fig)
