"""Run-directory figures and tables for the entry points (matplotlib is an ``experiments`` extra).

``alpha_trajectories`` draws a run's learned GA exponents per epoch from its ``metrics.jsonl``;
``alpha_table`` formats the learned exponents of ``results.json`` for the terminal.
``scripts/plot_alpha.py trajectories`` uses the same function.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

#: The named means along alpha.
NAMED = {-1.0: "min", -0.5: "harmonic", 0.0: "geometric", 0.5: "arithmetic", 1.0: "max"}
_SHORT = {"min": "min", "harmonic": "harm", "geometric": "geo", "arithmetic": "arith", "max": "max"}


def per_head(alpha) -> list[float]:
    """One layer's alpha as per-head values: a float (scope layer) is one value; ``[H, 1]`` or
    ``[H, C]`` (scope head / channel) give H values (the channel mean for ``[H, C]``)."""
    a = np.asarray(alpha, float)
    if a.ndim == 0:
        return [float(a)]
    return [float(v) for v in a.reshape(a.shape[0], -1).mean(-1)]


def nearest_named(alpha: float) -> str:
    key = min(NAMED, key=lambda k: abs(k - alpha))
    return NAMED[key]


def alpha_table(alphas: dict, best_epoch=None) -> str:
    """The learned alphas as a table: one row per layer, one column per head, with the named
    mean each is nearest to."""
    others = {k: v for k, v in alphas.items() if "/" in k}  # an aggregator's own parameters: 'gat_0/p'
    alphas = {k: v for k, v in alphas.items() if "/" not in k}
    lines = [f"learned {name}" + (f" at the best epoch ({best_epoch})" if best_epoch is not None else "")
             + " (per head, mean over channels): " + " ".join(f"{v:+.3f}" for v in per_head(value)) for name, value in others.items()]
    if not alphas:
        return "\n".join(lines)
    rows = {layer: per_head(value) for layer, value in alphas.items()}
    width = max(min(len(v), 8) for v in rows.values())
    channel = any(np.ndim(v) == 2 and np.shape(v)[1] > 1 for v in alphas.values())
    title = "learned alphas" + (f" at the best epoch ({best_epoch})" if best_epoch is not None else "")
    title += " (mean over channels)" if channel else ""
    lines = lines + [title + " and the nearest named mean (-1 min, -0.5 harm, 0 geo, 0.5 arith, 1 max)",
             f"{'layer':<8}" + "".join(f"{'head ' + str(h) if width > 1 else 'alpha':>13}" for h in range(width))]
    for layer, values in rows.items():
        if len(values) > 8:  # a readout learned per channel: summarise
            lines.append(f"{layer:<10} {len(values)} channels: mean {np.mean(values):+.3f} "
                         f"({_SHORT[nearest_named(float(np.mean(values)))]}), range [{min(values):+.3f}, {max(values):+.3f}]")
            continue
        cells = "".join(f"{f'{v:+.3f} {_SHORT[nearest_named(v)]}':>13}" for v in values)
        lines.append(f"{layer:<10}{cells}")
    return "\n".join(lines)


def alpha_trajectories(run_dir, out) -> bool:
    """Plot each learned alpha (per layer, per head) against the epoch, from
    ``run_dir/metrics.jsonl``, into the PNG ``out``. Returns False when nothing was learned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(line) for line in (pathlib.Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    layers = sorted({k for line in lines for k in line.get("alphas", {}) if "/" not in k})  # alphas, not p or t
    if not layers:
        return False
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        epochs = [line["epoch"] for line in lines if layer in line.get("alphas", {})]
        values = np.array([per_head(line["alphas"][layer]) for line in lines if layer in line.get("alphas", {})])
        for head in range(values.shape[1]):
            ax.plot(epochs, values[:, head], lw=1, label=f"head {head}" if values.shape[1] > 1 else None)
        for named in NAMED:
            ax.axhline(named, color="0.85", lw=0.5, zorder=0)
        ax.set_title(layer)
        ax.set_xlabel("epoch")
        ax.set_ylim(-1.05, 1.05)
    axes[0][0].set_ylabel("alpha")
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return True
