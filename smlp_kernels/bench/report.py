"""Output of a run: the terminal tables, and the JSON and CSV files.

The JSON file (``SCHEMA_VERSION`` 1) is one object::

    schema_version  1
    tool            "smlp-bench"
    meta            date (ISO 8601, UTC), git_commit (or null), git_dirty, hostname, command,
                    device {type, name, ...}, versions {smlp_kernels, python, torch, triton,
                    cuda, cudnn, platform}, settings {...}, load_average, suites, timing,
                    duration_s, interrupted
    ceilings        device, copy_bytes_per_s, compute_flop_per_s {dtype: FLOP/s} (the
                    roofline's compute ceiling), compute_source {dtype: fma_peak_fp32 |
                    fma_peak_fp64 | fma_peak_bf16 | torch_matmul | torch_matmul_lower_bound},
                    matmul_flop_per_s {dtype: FLOP/s} (torch.mm's rate; on CPU an achieved
                    rate, not a ceiling), fma_peak_flop_per_s {fp32|fp64|bf16: FLOP/s} (CPU),
                    notes, details (see :mod:`.roofline`); files from before the FMA peak
                    have only matmul_flop_per_s, which was their ceiling
    providers       {name: description}
    results         one object per (case, provider) with exactly the keys of RESULT_FIELDS
    summary         geometric means per (kind, dtype, batch, mode, provider)
    warnings        one object per result with a floor% above 100, a measurement error:
                    case_id, provider, roofline_pct, message (optional in older files)

The CSV file has one row per result: the RESULT_FIELDS columns and then ``suite``, ``torch``,
``git_commit``, ``date`` (so files from several runs can be concatenated), and the row
dtype's ``compute_ceiling_flop_per_s``, ``compute_ceiling`` (its source),
``torch_matmul_flop_per_s`` and ``roofline_warning`` (non-empty for a floor% above 100).
The ceiling columns are the file's ``ceilings`` (a merged file's are its last run's).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .analysis import ROOFLINE_WARNING, roofline_warning, roofline_warnings
from .roofline import FMA_PEAK, TORCH_MATMUL, TORCH_MATMUL_LOWER_BOUND, compute_ceilings
from .runner import RESULT_FIELDS

__all__ = [
    "CSV_EXTRA_FIELDS",
    "SCHEMA_VERSION",
    "build_report",
    "file_stem",
    "format_tables",
    "merge_reports",
    "validate_report",
    "write_csv",
    "write_json",
]

SCHEMA_VERSION = 1
CSV_EXTRA_FIELDS = (
    "suite",
    "torch",
    "git_commit",
    "date",
    "compute_ceiling_flop_per_s",
    "compute_ceiling",
    "torch_matmul_flop_per_s",
    "roofline_warning",
)

_TOP_KEYS = {
    "schema_version": int,
    "tool": str,
    "meta": dict,
    "ceilings": (dict, type(None)),
    "providers": dict,
    "results": list,
    "summary": list,
}
_META_KEYS = ("date", "git_commit", "device", "versions", "suites", "timing", "duration_s")
# The type of every result field (None is allowed for all but the first few).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    **dict.fromkeys(["case_id", "kind", "name", "label", "dtype", "mode", "device"], str),
    **dict.fromkeys(["provider", "status"], str),
    **dict.fromkeys(["batch", "channels", "out_channels", "height", "width", "reps"], int),
    **dict.fromkeys(["flops", "flops_counted", "flops_counted_expected", "bytes"], int),
    "peak_mem_bytes": int,
    "check_passed": bool,
    **dict.fromkeys(
        ["error", "timing_method", "flops_check", "peak_mem_note", "check_detail"], str
    ),
}
_NOT_NULL = ("case_id", "kind", "name", "batch", "dtype", "mode", "device", "provider", "status")


def _clean(value):
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def build_report(
    meta: dict,
    ceilings: dict | None,
    providers: dict[str, str],
    results: list[dict],
    summary: list[dict],
) -> dict:
    """The JSON document of a run (see the module docstring)."""
    return _clean(
        {
            "schema_version": SCHEMA_VERSION,
            "tool": "smlp-bench",
            "meta": meta,
            "ceilings": ceilings,
            "providers": providers,
            "results": results,
            "summary": summary,
            "warnings": roofline_warnings(results),
        }
    )


def validate_report(doc: dict) -> list[str]:
    """Problems with a report document against schema 1; empty when it conforms."""
    problems = []
    for key, typ in _TOP_KEYS.items():
        if key not in doc:
            problems.append(f"missing top-level key {key!r}")
        elif not isinstance(doc[key], typ):
            problems.append(f"{key!r} has type {type(doc[key]).__name__}")
    if problems:
        return problems
    if doc["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version {doc['schema_version']} != {SCHEMA_VERSION}")
    problems += [f"meta lacks {k!r}" for k in _META_KEYS if k not in doc["meta"]]
    if not isinstance(doc.get("warnings", []), list):
        problems.append("'warnings' is not a list")
    for i, row in enumerate(doc["results"]):
        if list(row) != list(RESULT_FIELDS):
            problems.append(f"results[{i}] keys differ from RESULT_FIELDS")
            continue
        for key, value in row.items():
            if value is None:
                if key in _NOT_NULL:
                    problems.append(f"results[{i}].{key} is null")
                continue
            typ = _FIELD_TYPES.get(key, (int, float))
            if isinstance(value, bool) and typ is not bool:
                problems.append(f"results[{i}].{key} is a bool")
            elif not isinstance(value, typ):
                problems.append(f"results[{i}].{key} has type {type(value).__name__}")
        if row["status"] not in ("ok", "failed", "skipped"):
            problems.append(f"results[{i}].status is {row['status']!r}")
        if row["status"] == "ok" and row["median_ms"] is None:
            problems.append(f"results[{i}] is ok without a median")
        if row["status"] != "ok" and not row["error"]:
            problems.append(f"results[{i}] is {row['status']} without an error")
    return problems


def merge_reports(docs: Sequence[dict]) -> dict:
    """One report from several runs on the same device (e.g. a long GPU suite run shape by
    shape under a per-command time limit).

    Every case keeps all its rows from the *last* report that has it, so each speed-up and
    memory ratio still compares providers measured in the same run; the summary is
    recomputed over the merged rows. ``meta`` is the last report's, with ``merged_from``
    listing each input's date, git commit and command; ``ceilings`` are the last report's
    (each row keeps the roofline figures of its own run). ValueError for different devices
    or schema versions.
    """
    from .analysis import summarize_results

    if not docs:
        raise ValueError("merge_reports: no reports")
    for doc in docs:
        problems = validate_report(doc)
        if problems:
            raise ValueError(f"merge_reports: not a schema {SCHEMA_VERSION} report: {problems[0]}")
    names = {d["meta"]["device"]["name"] for d in docs}
    if len(names) > 1:
        raise ValueError(f"merge_reports: reports from different devices: {sorted(names)}")
    owner: dict[str, int] = {}
    for i, doc in enumerate(docs):
        for row in doc["results"]:
            owner[row["case_id"]] = i
    results = [r for i, d in enumerate(docs) for r in d["results"] if owner[r["case_id"]] == i]
    meta = dict(docs[-1]["meta"])
    meta["merged_from"] = [
        {k: d["meta"].get(k) for k in ("date", "git_commit", "command")} for d in docs
    ]
    meta["suites"] = list(dict.fromkeys(s for d in docs for s in d["meta"]["suites"]))
    providers: dict[str, str] = {}
    for doc in docs:
        providers.update(doc["providers"])
    return build_report(meta, docs[-1]["ceilings"], providers, results, summarize_results(results))


def write_json(doc: dict, path: Path) -> None:
    """Write the report; atomically (a reader or a kill never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def write_csv(doc: dict, path: Path) -> None:
    """One row per result, RESULT_FIELDS then CSV_EXTRA_FIELDS."""
    meta = doc["meta"]
    extra = {
        "suite": ",".join(meta.get("suites") or []),
        "torch": meta["versions"]["torch"],
        "git_commit": meta["git_commit"],
        "date": meta["date"],
    }
    ceilings = doc.get("ceilings") or {}
    compute, source = compute_ceilings(ceilings) if ceilings else ({}, {})
    matmul = ceilings.get("matmul_flop_per_s") or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*RESULT_FIELDS, *CSV_EXTRA_FIELDS])
        writer.writeheader()
        for row in doc["results"]:
            flagged = row["status"] == "ok" and roofline_warning(row["roofline_pct"])
            per_row = {
                "compute_ceiling_flop_per_s": compute.get(row["dtype"]),
                "compute_ceiling": source.get(row["dtype"]),
                "torch_matmul_flop_per_s": matmul.get(row["dtype"]),
                "roofline_warning": ROOFLINE_WARNING if flagged else "",
            }
            writer.writerow({**row, **extra, **per_row})


def file_stem(suites: Sequence[str], device_name: str, device_type: str) -> str:
    """``smlp-bench-<suites>-<device>``, e.g. ``smlp-bench-gpu-nvidia-h100-80gb-hbm3``."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower().replace("(r)", "")).strip("-")
    if device_type == "cpu":
        slug = f"cpu-{slug}"
    return f"smlp-bench-{'+'.join(suites)}-{slug}"


# --------------------------------------------------------------------------------------------
# Terminal tables
# --------------------------------------------------------------------------------------------


def _num(fmt: str) -> Callable[[object], str]:
    return lambda v: "-" if v is None else format(v, fmt)


def _speedup(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


# The baselines of the speed-up columns: title, width, the suffix of the speedup_vs_* keys.
_BASELINES = (
    ("x eager", 7, "spach_eager"),
    ("x compile", 9, "spach_compile"),
    ("x max-at", 8, "spach_compile_max_autotune"),
)


def _speedup_columns(n: int, *, summary: bool = False) -> list[tuple]:
    """Columns of the speed-ups against the first n baselines: a result row's speed-up, or
    for a summary row the geometric mean and then the worst ("min") one."""
    columns = []
    for title, width, base in _BASELINES[:n]:
        if summary:
            columns.append((title, width, lambda s, k=f"geomean_speedup_vs_{base}": _speedup(s[k])))
            columns.append(("min", 6, lambda s, k=f"min_speedup_vs_{base}": _speedup(s[k])))
        else:
            columns.append((title, width, lambda r, k=f"speedup_vs_{base}": _speedup(r[k])))
    return columns


def _render(columns: list[tuple[str, int, Callable[[dict], str]]], rows: list[dict]) -> str:
    lines = [" ".join(f"{h:>{w}}" if w > 0 else f"{h:<{-w}}" for h, w, _ in columns).rstrip()]
    lines.append("-" * len(lines[0]))
    for row in rows:
        cells = []
        for _, w, get in columns:
            text = get(row)
            cells.append(f"{text:>{w}}" if w > 0 else f"{text:<{-w}}")
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines)


def _ms(v: float) -> str:
    return f"{v:#.4g}"  # 4 significant digits: microseconds on a GPU, milliseconds on a CPU


def _time_cell(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"].upper()
    return _ms(row["median_ms"])


def _note(row: dict, width: int = 70) -> str:
    text = row["error"] if row["status"] != "ok" else ""
    if row["status"] == "ok" and row["flops_check"] == "MISMATCH":
        text = f"FLOP count {row['flops_counted']} != expected {row['flops_counted_expected']}"
    text = " ".join(str(text or "").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _range(row: dict) -> str:
    if row["status"] != "ok":
        return ""
    return f"{_ms(row['p20_ms'])}-{_ms(row['p80_ms'])}"


def _shape(row: dict) -> str:
    out = f"-O{row['out_channels']}" if row["out_channels"] != row["channels"] else ""
    return f"B{row['batch']}-C{row['channels']}{out}-H{row['height']}-W{row['width']}"


def _mib(v) -> str:
    return "-" if v is None else f"{v / 2**20:.1f}"


def _rate(v: float, gpu: bool) -> str:
    return f"{v / 1e12:.1f} TFLOP/s" if gpu else f"{v / 1e9:.1f} GFLOP/s"


def _ceilings_line(ceilings: dict, gpu: bool) -> str:
    """The measured ceilings, and torch's matmul rate wherever it is not the ceiling."""
    compute, source = compute_ceilings(ceilings)
    peaks = ceilings.get("fma_peak_flop_per_s") or {}
    parts = [f"copy {ceilings['copy_bytes_per_s'] / 1e9:.1f} GB/s (read + write)"]
    if peaks:
        parts.append(
            "FMA peak " + ", ".join(f"{k} {_rate(v, gpu)}" for k, v in sorted(peaks.items()))
        )
    others = []
    for dtype, rate in sorted(compute.items()):
        src = source.get(dtype, "")
        if rate is None or src == f"{FMA_PEAK}_{dtype}":
            continue  # no ceiling, or its own FMA peak, shown above
        if src.startswith(FMA_PEAK):
            others.append(f"{dtype} {_rate(rate, gpu)} (the {src[len(FMA_PEAK) + 1 :]} peak)")
        elif src == TORCH_MATMUL_LOWER_BOUND:
            others.append(f"{dtype} {_rate(rate, gpu)} (torch matmul: a lower bound)")
        elif src == TORCH_MATMUL:
            others.append(f"{dtype} {_rate(rate, gpu)} (torch matmul)")
        else:
            others.append(f"{dtype} {_rate(rate, gpu)}")
    if others:
        parts.append("compute " + ", ".join(others))
    line = "measured ceilings: " + ", ".join(parts)
    # torch's matmul rate, labelled as such, for every dtype whose ceiling it is not.
    matmul = {
        k: v
        for k, v in sorted((ceilings.get("matmul_flop_per_s") or {}).items())
        if v is not None and not source.get(k, "").startswith(TORCH_MATMUL)
    }
    if matmul:
        rates = ", ".join(f"{k} {_rate(v, gpu)}" for k, v in matmul.items())
        line += f"; torch matmul {rates} (an achieved rate, not a ceiling)"
    return line


def _floor_pct(pct) -> str:
    """floor% with a "!" when above 100 (a measurement error, see the footnote)."""
    if pct is None:
        return "-"
    return f"{pct:.1f}!" if roofline_warning(pct) else f"{pct:.1f}"


def format_tables(doc: dict) -> str:
    """The run as readable text: header, ceilings, op table, model table, summary."""
    meta, ceilings = doc["meta"], doc["ceilings"]
    gpu = meta["device"]["type"] == "cuda"
    flop_unit, flop_scale = ("TFLOP/s", 1.0) if gpu else ("GFLOP/s", 1e3)
    commit = meta["git_commit"][:10] if meta["git_commit"] else "unknown commit"
    if meta.get("git_dirty"):
        commit += " (uncommitted changes)"
    out = [
        f"smlp-bench {'+'.join(meta['suites'])} on {meta['device']['name']}; "
        f"torch {meta['versions']['torch']}, smlp_kernels {meta['versions']['smlp_kernels']}, "
        f"{commit}, {meta['date']}",
    ]
    if ceilings:
        out.append(_ceilings_line(ceilings, gpu))
        out += [f"  note: {note}" for note in ceilings.get("notes") or []]
    runs = meta.get("runs") or []
    if len(runs) > 1:
        out.append(
            f"resumed: the rows come from {len(runs)} runs of the same command (--resume); a "
            "case's providers may have been timed in different runs (meta.runs says which)"
        )
    t = meta["timing"]
    out.append(
        f"times: median and 20%-80% quantiles of {t['method_note']}; speed-up = baseline "
        "time / this time; floor% = 100 * roofline floor / median"
    )
    ops = [r for r in doc["results"] if r["kind"] == "op"]
    models = [r for r in doc["results"] if r["kind"] == "model"]
    rate = _num(".1f")
    if ops:
        columns = [
            ("stage", -5, lambda r: r["label"]),
            ("shape", -17, _shape),
            ("dtype", -5, lambda r: r["dtype"]),
            ("mode", -7, lambda r: r["mode"]),
            ("provider", -26, lambda r: r["provider"]),
            ("median ms", 10, _time_cell),
            ("p20-p80 ms", 15, _range),
            (flop_unit, 8, lambda r: rate(r["tflop_per_s"] and r["tflop_per_s"] * flop_scale)),
            ("GB/s", 7, lambda r: rate(r["gb_per_s"])),
            ("floor%", 7, lambda r: _floor_pct(r["roofline_pct"])),
            *_speedup_columns(3),
            ("peak MiB", 8, lambda r: _mib(r["peak_mem_bytes"])),
            ("note", -20, _note),
        ]
        out += ["", "smlp_mix (one call; shape B=batch C H W)", _render(columns, ops)]
        flagged = sum(r["status"] == "ok" and roofline_warning(r["roofline_pct"]) for r in ops)
        if flagged:
            rows = "1 row" if flagged == 1 else f"{flagged} rows"
            out.append(f"! {ROOFLINE_WARNING} ({rows}; listed in the JSON's warnings)")
    if models:
        columns = [
            ("model", -14, lambda r: r["name"]),
            ("batch", 5, lambda r: str(r["batch"])),
            ("dtype", -5, lambda r: r["dtype"]),
            ("mode", -5, lambda r: r["mode"]),
            ("provider", -26, lambda r: r["provider"]),
            ("median ms", 10, _time_cell),
            ("p20-p80 ms", 15, _range),
            ("images/s", 9, lambda r: rate(r["images_per_s"])),
            (flop_unit, 8, lambda r: rate(r["tflop_per_s"] and r["tflop_per_s"] * flop_scale)),
            *_speedup_columns(2),
            ("peak MiB", 8, lambda r: _mib(r["peak_mem_bytes"])),
            ("note", -20, _note),
        ]
        out += [
            "",
            "whole models (fwd: inference, eval mode; train: forward + loss + backward + SGD step)",
            _render(columns, models),
        ]
    summary = [
        s
        for s in doc["summary"]
        if s["ok"] and not s["provider"].startswith("spach-eager") and s["ok"] > 1
    ]
    if summary:
        columns = [
            ("kind", -5, lambda s: s["kind"]),
            ("dtype", -5, lambda s: s["dtype"]),
            ("batch", 5, lambda s: str(s["batch"])),
            ("mode", -7, lambda s: s["mode"]),
            ("provider", -26, lambda s: s["provider"]),
            ("n", 2, lambda s: str(s["ok"])),
            *_speedup_columns(3, summary=True),
            ("min floor%", 10, lambda s: _floor_pct(s["min_roofline_pct"])),
            ("mem/eager", 9, lambda s: _num(".2f")(s["geomean_mem_ratio_vs_spach_eager"])),
            ("max", 5, lambda s: _num(".2f")(s["max_mem_ratio_vs_spach_eager"])),
        ]
        out += [
            "",
            "geometric means over the shapes (models) of each group; min = the worst one",
            _render(columns, summary),
        ]
    failed = sum(r["status"] == "failed" for r in doc["results"])
    skipped = sum(r["status"] == "skipped" for r in doc["results"])
    out += ["", f"{len(doc['results'])} results: {failed} failed, {skipped} skipped"]
    return "\n".join(out)
