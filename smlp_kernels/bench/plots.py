"""Plots of a run (matplotlib, imported only here and only when plotting).

* :func:`plot_speedups`: for each mode, the speed-up of every provider over one baseline,
  per shape (bars, log scale). The baseline is the strongest SPACH-style provider that ran:
  ``spach-compile-max-autotune``, else ``spach-compile``, else ``spach-eager``.
* :func:`plot_roofline`: achieved FLOP/s against arithmetic intensity (FLOPs per byte of
  the fewest-bytes count), log-log, under the roofs ``min(compute ceiling, intensity * copy
  bandwidth)`` measured in the same run (the compute ceiling: see :mod:`.roofline`).
"""

from __future__ import annotations

from pathlib import Path

from .providers import BASELINES
from .roofline import compute_ceilings

__all__ = ["plot_roofline", "plot_speedups", "require_matplotlib"]


def require_matplotlib():
    """matplotlib's Figure class, or ImportError saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "plots need matplotlib: pip install matplotlib (or the 'bench' extra: "
            "pip install 'smlp-kernels[bench]')"
        ) from exc
    return Figure


def _title(doc: dict) -> str:
    meta = doc["meta"]
    return f"{meta['device']['name']}\ntorch {meta['versions']['torch']}, {meta['date'][:10]}"


def _pick_baseline(rows: list[dict]) -> str | None:
    present = {r["provider"] for r in rows if r["status"] == "ok"}
    for baseline in reversed(BASELINES):
        if baseline in present:
            return baseline
    return None


def plot_speedups(doc: dict, path: Path) -> Path | None:
    """Bar chart of speed-ups per shape, one panel per mode (and one for models).

    Returns the file written, or None when no result has a baseline to compare with.
    """
    Figure = require_matplotlib()
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    baseline = _pick_baseline(ok)
    if baseline is None:
        return None
    key = "speedup_vs_" + baseline.replace("-", "_")
    panels: dict[str, list[dict]] = {}
    for r in ok:
        if r[key] is None or r["provider"] == baseline:
            continue
        panel = r["mode"] if r["kind"] == "op" else f"models {r['mode']}"
        panels.setdefault(panel, []).append(r)
    if not panels:
        return None
    fig = Figure(figsize=(max(6.0, 4.5 * len(panels)), 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, rows) in zip(axes, panels.items(), strict=True):
        shapes = list(dict.fromkeys(_shape_label(r) for r in rows))
        providers = list(dict.fromkeys(r["provider"] for r in rows))
        width = 0.8 / len(providers)
        for i, provider in enumerate(providers):
            values = {_shape_label(r): r[key] for r in rows if r["provider"] == provider}
            xs = [j + (i - (len(providers) - 1) / 2) * width for j in range(len(shapes))]
            ax.bar(xs, [values.get(s, 0.0) for s in shapes], width, label=provider)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.margins(y=0.1)
        ax.set_yscale("log")
        ax.set_xticks(range(len(shapes)), shapes, rotation=45, ha="right", fontsize=8)
        ax.set_title(panel)
        ax.set_ylabel(f"speed-up over {baseline} (x)")
        ax.legend(fontsize=7)
    fig.suptitle(f"sMLP mixing speed-ups, {_title(doc)}", fontsize=10)
    fig.savefig(path, dpi=120)
    return path


def _shape_label(row: dict) -> str:
    if row["kind"] == "model":
        return f"{row['name']} B{row['batch']} {row['dtype']}"
    return f"{row['label']} B{row['batch']} {row['dtype']}"


def plot_roofline(doc: dict, path: Path) -> Path | None:
    """Roofline chart of the op results; None when there are no ceilings or op results."""
    Figure = require_matplotlib()
    ceilings = doc["ceilings"]
    rows = [
        r
        for r in doc["results"]
        if r["kind"] == "op" and r["status"] == "ok" and r["flops"] and r["bytes"]
    ]
    if not ceilings or not rows:
        return None
    gpu = doc["meta"]["device"]["type"] == "cuda"
    unit, scale = ("TFLOP/s", 1e12) if gpu else ("GFLOP/s", 1e9)
    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.add_subplot()
    intensities = [r["flops"] / r["bytes"] for r in rows]
    lo, hi = min(intensities) / 2, max(intensities) * 2
    bandwidth = ceilings["copy_bytes_per_s"]
    compute, _ = compute_ceilings(ceilings)
    for dtype in sorted({r["dtype"] for r in rows}):
        peak = compute.get(dtype)
        if not peak:
            continue
        knee = peak / bandwidth
        xs = [lo, *([knee] if lo < knee < hi else []), hi]
        ax.plot(xs, [min(peak, x * bandwidth) / scale for x in xs], "--", label=f"roof {dtype}")
    markers = {"fwd": "o", "bwd": "s", "fwd+bwd": "^"}
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    colors = {p: f"C{i % 10}" for i, p in enumerate(providers)}
    for r, x in zip(rows, intensities, strict=True):
        ax.scatter(
            x,
            r["flops"] / (r["median_ms"] * 1e-3) / scale,
            color=colors[r["provider"]],
            marker=markers.get(r["mode"], "o"),
            s=24,
        )
    for p in providers:
        ax.scatter([], [], color=colors[p], label=p)
    for mode, marker in markers.items():
        if any(r["mode"] == mode for r in rows):
            ax.scatter([], [], color="gray", marker=marker, label=mode)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOPs per byte of the fewest-bytes count)")
    ax.set_ylabel(f"achieved {unit}")
    ax.set_title(f"sMLP mixing roofline, {_title(doc)}", fontsize=10)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    return path
