"""Comparisons within a run: speed-ups over the SPACH-style baselines, memory ratios, and
their geometric means over shapes.

Every comparison is between rows of the same case (same op or model, shape, dtype, mode),
measured in the same run on the same device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .providers import BASELINES

__all__ = [
    "ROOFLINE_WARNING",
    "add_comparisons",
    "geomean",
    "roofline_warning",
    "roofline_warnings",
    "summarize_results",
]

# Why a floor% above 100 is an error, not a result: nothing beats a true floor.
ROOFLINE_WARNING = (
    "floor% over 100 is a measurement error: the run beat its roofline floor, so a ceiling "
    "was measured too low for this case (the compute peak, or the copy bandwidth when the "
    "data stays in cache)"
)


def geomean(values: Iterable[float]) -> float | None:
    vals = [v for v in values if v is not None and v > 0]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def _baseline_key(baseline: str) -> str:
    return "speedup_vs_" + baseline.replace("-", "_")


def add_comparisons(results: list[dict]) -> None:
    """Fill ``speedup_vs_*`` (baseline time / this time, > 1 means faster than the baseline)
    and ``mem_ratio_vs_spach_eager`` (this peak / spach-eager's) in place; values from an
    earlier call (rows kept by ``smlp-bench --resume``) are recomputed."""
    by_case: dict[str, dict[str, dict]] = {}
    for row in results:
        row.update(dict.fromkeys([*map(_baseline_key, BASELINES), "mem_ratio_vs_spach_eager"]))
        by_case.setdefault(row["case_id"], {})[row["provider"]] = row
    for rows in by_case.values():
        for baseline in BASELINES:
            base = rows.get(baseline)
            if base is None or base["status"] != "ok":
                continue
            for row in rows.values():
                if row["status"] == "ok":
                    row[_baseline_key(baseline)] = base["median_ms"] / row["median_ms"]
        eager = rows.get("spach-eager")
        if eager is not None and eager["status"] == "ok" and eager["peak_mem_bytes"]:
            for row in rows.values():
                if row["status"] == "ok" and row["peak_mem_bytes"] is not None:
                    row["mem_ratio_vs_spach_eager"] = (
                        row["peak_mem_bytes"] / eager["peak_mem_bytes"]
                    )


def roofline_warning(pct: float | None) -> bool:
    """True for a floor% that no correct roofline allows (above 100)."""
    return pct is not None and pct > 100.0


def roofline_warnings(results: list[dict]) -> list[dict]:
    """One entry per timed row whose floor% is above 100: ``case_id``, ``provider``,
    ``roofline_pct`` and ``message`` (:data:`ROOFLINE_WARNING`)."""
    return [
        {
            "case_id": row["case_id"],
            "provider": row["provider"],
            "roofline_pct": row["roofline_pct"],
            "message": ROOFLINE_WARNING,
        }
        for row in results
        if row["status"] == "ok" and roofline_warning(row["roofline_pct"])
    ]


def summarize_results(results: list[dict]) -> list[dict]:
    """One row per (kind, dtype, batch, mode, provider): geometric means over the shapes
    (or models) of each speed-up and memory ratio, their worst values, the worst roofline
    percentage, and how many cases went into each figure."""
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        key = (row["kind"], row["dtype"], row["batch"], row["mode"], row["provider"])
        groups.setdefault(key, []).append(row)
    out = []
    for (kind, dtype, batch, mode, provider), rows in groups.items():
        ok = [r for r in rows if r["status"] == "ok"]
        entry: dict = {
            "kind": kind,
            "dtype": dtype,
            "batch": batch,
            "mode": mode,
            "provider": provider,
            "cases": len(rows),
            "ok": len(ok),
        }
        for baseline in BASELINES:
            key = _baseline_key(baseline)
            vals = [r[key] for r in ok if r[key] is not None]
            entry[f"geomean_{key}"] = geomean(vals)
            entry[f"min_{key}"] = min(vals) if vals else None
            entry[f"n_{key}"] = len(vals)
        pct = [r["roofline_pct"] for r in ok if r["roofline_pct"] is not None]
        entry["min_roofline_pct"] = min(pct) if pct else None
        entry["geomean_roofline_pct"] = geomean(pct)
        mem = [r["mem_ratio_vs_spach_eager"] for r in ok if r["mem_ratio_vs_spach_eager"]]
        entry["geomean_mem_ratio_vs_spach_eager"] = geomean(mem)
        entry["max_mem_ratio_vs_spach_eager"] = max(mem) if mem else None
        ips = [r["images_per_s"] for r in ok if r["images_per_s"] is not None]
        entry["geomean_images_per_s"] = geomean(ips)
        out.append(entry)
    return out
