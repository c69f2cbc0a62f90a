"""Training curves as a PNG beside the TensorBoard events: loss terms, learning rate, eval metrics.

TensorBoard needs a server; a PNG can go straight into a lab notebook or a paper's appendix.
The history is a list of {"iteration": int, name: float, ...} records kept in the checkpoint, so
a resumed run's plot covers the whole run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def main_metrics(history: list[dict[str, Any]]) -> dict[str, str]:
    """History key -> label of the evaluation numbers worth plotting, all in %.

    Face: each set's verification accuracy per resolution (`lfw@14`), stored as fractions;
    classification: top-k accuracies, already in %. TAR, std, pair counts and FAR stay in results.json.
    """
    keys = sorted({k for h in history for k in h if k.startswith("eval/")})
    face = {}
    for key in keys:
        parts = key.split("/")  # eval/sets/<set>/results/<column>/accuracy
        if len(parts) == 6 and parts[1] == "sets" and parts[3] == "results" and parts[5] == "accuracy":
            face[key] = f"{parts[2]}@{parts[4]}"
    if face:
        return face
    return {k: k.split("/", 1)[1].replace("top", "top-") for k in keys if k.split("/", 1)[1].startswith("top")}


def _percent(key: str, value: float) -> float:
    return 100.0 * value if key.endswith("/accuracy") else value


def plot_training_curves(history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Three panels (losses, lr, main eval metrics in %) over iterations; None when there is nothing to plot."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = main_metrics(history)
    groups = {
        "loss": {k: k.split("/", 1)[1] for k in sorted({k for h in history for k in h if k.startswith("loss/")})},
        "learning rate": {"lr": "lr"} if any("lr" in h for h in history) else {},
        "evaluation (%)": metrics,
    }
    panels = [(title, names) for title, names in groups.items() if names]
    if not panels:
        return None
    last = max(int(h["iteration"]) for h in history)
    figure, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 3.6), squeeze=False)
    for axis, (title, names) in zip(axes[0], panels):
        for name, label in names.items():
            points = [(h["iteration"], _percent(name, float(h[name]))) for h in history if name in h]
            xs, ys = zip(*points)
            axis.plot(xs, ys, marker="o" if len(points) < 20 else None, markersize=3, label=label)
        axis.set_title(title)
        axis.set_xlabel("iteration")
        axis.set_xlim(0, max(last, 1) * 1.04)  # from the start, even with a single evaluation point
        if title == "learning rate":
            # linear: a schedule that reaches 0 (cosine to MIN_LR 0) has no place on a log axis
            axis.set_ylim(bottom=0)
        axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)
    return path
