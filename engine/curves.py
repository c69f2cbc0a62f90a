"""Training curves as a PNG beside the TensorBoard events: loss terms, learning rate, eval metrics.

TensorBoard needs a server; a PNG can go straight into a lab notebook or a paper's appendix.
The history is a list of {"iteration": int, name: float, ...} records kept in the checkpoint, so
a resumed run's plot covers the whole run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_training_curves(history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Three panels (losses, lr, eval metrics) over iterations; None when there is nothing to plot."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {
        "loss": sorted({k for h in history for k in h if k.startswith("loss/")}),
        "learning rate": ["lr"] if any("lr" in h for h in history) else [],
        "evaluation": sorted({k for h in history for k in h if k.startswith("eval/")}),
    }
    panels = [(title, names) for title, names in groups.items() if names]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, (title, names) in zip(axes[0], panels):
        for name in names:
            points = [(h["iteration"], h[name]) for h in history if name in h]
            xs, ys = zip(*points)
            axis.plot(xs, ys, marker="o" if len(points) < 20 else None, markersize=3,
                      label=name.split("/", 1)[-1])
        axis.set_title(title)
        axis.set_xlabel("iteration")
        if title == "learning rate":
            axis.set_yscale("log")
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
