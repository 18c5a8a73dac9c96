"""Sweep reports: figures (PNG and SVG), ``report.md`` and ``report.html``.

Contract
--------
``write_report(out)`` reads ``out/results.jsonl`` and writes into ``out/``:

* ``tokens_vs_l2``: tokens/s against L2 size, prefetch on and off, per workload;
* ``perf_per_cost``: tokens/s/mm² and tokens/s/$ against L2 size, the optimum marked;
* ``batch``: tokens/s and tokens/s/$ against the batch (sequences decoded together), per
  L2 size;
* ``kv_budget``: tokens/s and the KV bytes a decode step reads against the compressed KV
  cache's budget, per L2 size;
* ``area``: the area breakdown (logic, logic memories, L2, PHY) of each L2 size;
* ``pareto``: tokens/s against area, the Pareto front of each model and workload drawn;
* ``roofline``: the base hardware's roofline with the model's operators on it (decode
  and prefill matmuls at their arithmetic intensity);
* ``time_breakdown``: a decode step's time split into compute, exposed DMA (at most)
  and both engines idle, a bar per point;

then ``report.md`` and ``report.html`` (every figure, the best points, the findings).
It returns the findings as a dict. Every figure is written whatever the spec varies, so
that the report's layout does not depend on it: one whose x axis the sweep keeps fixed
(the batch, the KV budget) is a note saying so.

Tested by tests/sweeps/test_sweeps.py.
"""

from __future__ import annotations

import html
import json
import math
import re
import sys
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sweeps.spec import HW_FIELDS, SETTINGS, is_workload, point_hardware  # noqa: E402

FIGURES = ("tokens_vs_l2", "perf_per_cost", "batch", "kv_budget", "area", "pareto",
           "roofline", "time_breakdown")


class ReportError(ValueError):
    """A folder without sweep results."""


def load_results(out: Path) -> list[dict]:
    """The feasible points of the spec last run into ``out``, one dict each."""
    return [r for r in _current(out).rows if r.get("feasible", True)]


@dataclass
class _Results:
    """The finished points of the spec last run into a folder (feasible or not), where
    each was read (``FILE:LINE``), how many of the spec's points have no row yet (an
    interrupted sweep), and how many rows belong to no point of the spec (a hand edit)."""
    rows: list[dict]
    where: dict[int, str]
    missing: int
    foreign: int


def _current(out: Path) -> _Results:
    """``_Results`` of ``out``; ``ReportError`` naming the file (and line, and field) for
    a folder, record or row the report cannot honour."""
    path = Path(out) / "results.jsonl"
    if Path(out).exists() and not Path(out).is_dir():
        raise ReportError(f"{out}: not a folder (a sweep's output folder)")
    if not path.exists():
        raise ReportError(f"{out}: no results.jsonl (run `accel sweep SPEC -o {out}` first)")
    rows, where = [], {}
    _hardware_cache.clear()         # (a hardware file may have changed since the last read)
    from sweeps.runner import SweepError, read_results
    try:
        lines = read_results(path)
    except SweepError as e:
        raise ReportError(str(e)) from None
    for number, row in lines:
        check_point(row, f"{path}:{number}")
        rows.append(row)
        where[id(row)] = f"{path}:{number}"
    current = Path(out) / "sweep.json"
    keys, code, workloads = _record(current)
    ours = [r for r in rows if r["key"] in keys]
    seen: dict[str, str] = {}
    for r in ours:
        if r["key"] in seen:         # a sweep writes each point once
            raise ReportError(f"{where[id(r)]}: the point of line "
                              f"{seen[r['key']].rsplit(':', 1)[1]} again")
        seen[r["key"]] = where[id(r)]
        try:
            check_row(r, where[id(r)], code, workloads)
        except _KeyMismatch:
            if len(ours) > 1 and not any(_hashes_to_key(o, code, workloads)
                                         for o in ours):
                raise ReportError(
                    f"{current}: none of its {len(ours)} points' rows hashes to its key under "
                    f"its code_version = {json.dumps(code)} (the record edited, or the "
                    f"hardware file changed since the sweep): rerun the sweep with --fresh"
                    ) from None
            raise
    if not any(r.get("feasible", True) for r in ours):
        reasons = Counter(r["reason"] for r in ours)
        why = (f" ({len(ours)} infeasible; {reasons.most_common(1)[0][1]} of them: "
               f"{reasons.most_common(1)[0][0]})" if ours else
               f" (its {len(rows)} rows are none of the {len(keys)} points {current.name} "
               f"lists: rerun the sweep)" if rows else "")
        raise ReportError(f"{path}: no finished feasible points{why}")
    return _Results(ours, where, len(keys) - len(ours), len(rows) - len(ours))


def _record(current: Path) -> tuple[set[str], str | None, dict | None]:
    """``sweep.json``'s point keys, the code version they were made under and the spec's
    workloads (name: ``{"prompt", "output"}``), the last two None where an older sweep did
    not record them; ``ReportError`` naming the file and field for a record no sweep
    writes."""
    if not current.exists():
        raise ReportError(f"{current}: missing (written by `accel sweep`, it says which "
                          f"rows belong to the spec last run); rerun the sweep")
    if not current.is_file():
        raise ReportError(f"{current}: not a file (`accel sweep` writes its record there); "
                          f"rerun the sweep")
    try:
        record = json.loads(current.read_text())
    except (OSError, ValueError) as e:        # (JSONDecodeError, UnicodeDecodeError)
        raise ReportError(f"{current}: not a sweep record ({e}); rerun the sweep") from None
    keys = record.get("keys") if isinstance(record, dict) else None
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise ReportError(f"{current}: not a sweep record (keys = "
                          f"{json.dumps(keys)[:60]} is not a list of point keys); rerun the "
                          f"sweep")
    code, workloads = record.get("code_version"), record.get("workloads")
    if code is not None and not (isinstance(code, str) and code):
        raise ReportError(f"{current}: code_version = {json.dumps(code)} is not a version "
                          f"(`accel sweep` records its code's hash); rerun the sweep")
    if workloads is not None:
        if not (isinstance(workloads, dict) and workloads):
            raise ReportError(f"{current}: workloads = {json.dumps(workloads)[:60]} is not "
                              f"the spec's workloads (name: prompt and output token counts); "
                              f"rerun the sweep")
        for name, w in workloads.items():
            if not is_workload(w):
                raise ReportError(f"{current}: workloads.{name} = {json.dumps(w)[:60]} is "
                                  f"not a workload (prompt and output token counts); rerun "
                                  f"the sweep")
    return set(map(str, keys)), code, workloads


def check_point(row, where: str) -> None:
    """``ReportError`` naming ``where`` (the file and line) for a row that is not a
    point: not a JSON object, or without the fields that pick it (its ``key``, and
    ``feasible`` where present)."""
    if not isinstance(row, dict):
        raise ReportError(f"{where}: not a point (a JSON object), but "
                          f"{json.dumps(row)[:40]}")
    _check_fields(row, where, ("key",), "name")
    _check_fields(row, where, ("feasible",), "flag", required=False)


def check_rows(path: Path, lines: list[tuple[int, object]], points: set[str],
               code: str | None = None, workloads: dict | None = None) -> None:
    """``check_point`` for each ``(line number, row)`` of ``path`` (``read_results``),
    and ``check_row`` (under ``code`` and the spec's ``workloads``) for those of
    ``points`` (keys), each hardware file read afresh."""
    _hardware_cache.clear()
    for number, row in lines:
        check_point(row, f"{path}:{number}")
        if row["key"] in points:
            check_row(row, f"{path}:{number}", code, workloads)


def check_row(row, where: str, code: str | None = None,
              workloads: dict | None = None) -> None:
    """``ReportError`` naming ``where`` (the file and line) for a row of ``results.jsonl``
    that no sweep writes: ``check_point``, ``_check_settings``, then ``_check_row`` for a
    feasible point and ``_check_names`` and a reason for an infeasible one; given the
    spec's ``workloads`` (name: lengths), a workload of the spec's, and for a feasible
    point its lengths; given the ``code`` version the sweep ran under, ``_check_key``. The
    report refuses such a row, and so does a sweep resuming into the folder to run its
    point (``sweeps.runner.finished_keys``), which would otherwise count it as finished."""
    check_point(row, where)
    _check_settings(row, where)
    feasible = row.get("feasible", True)
    if feasible:
        _check_row(row, where)
    else:
        if not (isinstance(row.get("reason"), str) and row["reason"].strip()):
            raise ReportError(f"{where}: an infeasible point without its reason "
                              f"(reason = {json.dumps(row.get('reason'))})")
        _check_names(row, where, [f for f in NAME_FIELDS if f != "array"])
        _hardware(row, where)
    if workloads is not None:
        name = row["workload"]
        if name not in workloads:
            raise ReportError(f"{where}: workload = {json.dumps(name)} is not one of the "
                              f"spec's ({', '.join(workloads)})")
        for field in ("prompt", "output"):
            if (feasible or field in row) and not (
                    type(row[field]) is int and row[field] == workloads[name][field]):
                raise ReportError(f"{where}: {field} = {json.dumps(row[field])} is not "
                                  f"workload {name}'s {workloads[name][field]}")
    if code and (feasible or workloads is not None):
        _check_key(row, where, code, workloads)


class _KeyMismatch(ReportError):
    """A row whose content does not hash to its key (``_check_key``)."""


def _check_key(row: dict, where: str, code: str, workloads: dict | None = None) -> None:
    """``ReportError`` for a row whose settings, workload lengths (the spec's
    ``workloads``' where given, else the row's own), hardware file or model do not hash
    to its ``key`` (``sweeps.runner.point_key`` under the ``code`` version it ran under):
    a field edited by hand (an infeasible point's L2 size, a prompt length: the report
    drew or listed them as points of their own), or its hardware file changed since the
    sweep. (A key hashes a workload's lengths, not its name: ``check_row`` checks the
    name against the spec's.)"""
    from sweeps.runner import point_key

    lengths = workloads or {row["workload"]: {"prompt": row["prompt"],
                                              "output": row["output"]}}
    try:
        key = point_key(row, lengths, code)
    except KeyError as e:
        raise ReportError(f"{where}: the point has no {e} (rerun the sweep with --fresh)"
                          ) from None
    if key != row["key"]:
        raise _KeyMismatch(f"{where}: its settings, workload lengths, model and hardware "
                           f"file are not those its key {row['key']} was made of (edited by "
                           f"hand, or the hardware file changed since the sweep): rerun "
                           f"the sweep with --fresh")


def _hashes_to_key(row: dict, code: str, workloads: dict | None) -> bool:
    """Whether a row (checked or not) hashes to its key under ``code`` (``_check_key``)."""
    try:
        _check_key(row, "", code, workloads)
    except Exception:          # (an unchecked row's bad value is its own line's refusal)
        return False
    return True


#: The fields of a feasible row the report reads (``sweeps.runner.evaluate_group`` writes
#: them): numbers, then on/off, then names.
NUMBER_FIELDS = ("l2_bytes", "prompt", "output", "tokens_per_s", "ttft_s", "tpot_s",
                 "area_mm2", "logic_mm2", "logic_memory_mm2", "l2_mm2", "phy_mm2",
                 "die_dollars", "dram_gbytes", "dram_dollars", "cost_dollars",
                 "tokens_per_s_per_mm2", "tokens_per_s_per_dollar", "decode_step_cycles",
                 "decode_load_busy", "decode_compute_busy", "decode_roofline_tokens_per_s")
FLAG_FIELDS = ("prefetch",)
NAME_FIELDS = ("model", "node", "array", "hw", "workload")
#: Counts a row may hold (1 where it does not)
COUNT_FIELDS = ("batch", "devices")
#: ... of them, those no feasible point has at 0 or below (``tpot_s`` is 0 where the
#: workload has one output token, no decode step: ``_check_row``)
POSITIVE_FIELDS = ("l2_bytes", "prompt", "output", "decode_step_cycles", "tokens_per_s",
                   "area_mm2", "die_dollars", "dram_gbytes", "dram_dollars", "cost_dollars",
                   "tokens_per_s_per_mm2", "tokens_per_s_per_dollar", "ttft_s")


#: Each kind of field: the test of its value and what the message calls it.
KINDS = {
    "number": (lambda v: isinstance(v, int | float) and not isinstance(v, bool)
               and abs(v) <= sys.float_info.max, "a finite number"),     # (NaN fails too)
    "positive": (lambda v: v > 0, "positive"),
    "flag": (lambda v: isinstance(v, bool), "true or false"),
    "name": (lambda v: isinstance(v, str), "a string"),
}


def _check_fields(row: dict, where: str, fields, kind: str, required: bool = True) -> None:
    """``ReportError`` naming ``where`` (the file and line) and the field, for a field of
    ``fields`` missing (where ``required``) or not of ``kind`` (a hand-edited
    ``results.jsonl``)."""
    ok, called = KINDS[kind]
    for field in fields:
        if field not in row:
            if required:
                raise ReportError(f"{where}: the point has no {field!r} (rerun the sweep "
                                  f"with --fresh)")
        elif not ok(row[field]):
            raise ReportError(f"{where}: {field} = {json.dumps(row[field])} is not {called}")


#: What a setting's type (``sweeps.spec.SETTINGS``) is called in a message.
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _check_settings(row: dict, where: str) -> None:
    """``ReportError`` for a setting of any row of the spec's, feasible or not, that no
    sweep writes: an ``l2_bytes`` that is not a count of bytes, a setting of the wrong
    type (``sweeps.spec.SETTINGS``), a weight or KV format the toolkit does not know (an
    infeasible row's settings are listed in the report: a bad one was a traceback after
    the figures were drawn)."""
    from models.integer import WEIGHT_FORMATS
    from sweeps.spec import KV_FORMATS

    v = row.get("l2_bytes")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ReportError(f"{where}: l2_bytes = {json.dumps(v)} is not a count of bytes")
    for field, kind in SETTINGS.items():
        if field not in row:
            continue
        v = row[field]
        ok = (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
              if kind is float else isinstance(v, kind) and not (kind is int
                                                                  and isinstance(v, bool)))
        if not ok:
            raise ReportError(f"{where}: {field} = {json.dumps(v)} is not {TYPE_NAMES[kind]}")
    for field, known in (("weights", WEIGHT_FORMATS), ("kv_format", KV_FORMATS)):
        if field in row and row[field] not in known:
            raise ReportError(f"{where}: {field} = {json.dumps(row[field])} is not one of "
                              f"{', '.join(known)}")


_hardware_cache: dict[str, object] = {}


def _hardware(row: dict, where: str):
    """The row's hardware (``sweeps.spec.point_hardware``), each description resolved
    once a read of the results; ``ReportError`` naming the row where it cannot be."""
    fields = json.dumps([row.get("hw"), row.get("prefetch"),
                         sorted((k, row[k]) for k in HW_FIELDS if k in row)])
    if fields not in _hardware_cache:
        try:
            _hardware_cache[fields] = point_hardware(row)
        except (OSError, ValueError, TypeError) as e:
            raise ReportError(f"{where}: its hardware: {e}") from None
    return _hardware_cache[fields]


def _check_names(row: dict, where: str, fields) -> None:
    """``ReportError`` for a name of ``fields`` missing or not a string, a technology node
    the cost model does not know (``sweeps.cost.NODES``) or a model that is not a
    preset."""
    from models.config import ConfigError, preset
    from sweeps.cost import NODES

    _check_fields(row, where, fields, "name")
    if row["node"] not in NODES:
        raise ReportError(f"{where}: node = {json.dumps(row['node'])} is not a node the cost "
                          f"model knows ({', '.join(NODES)})")
    try:
        preset(row["model"])
    except ConfigError as e:
        raise ReportError(f"{where}: model: {e}") from None


def _check_row(row: dict, where: str) -> None:
    """``_check_fields`` over every field of a feasible row the report reads, then what
    no point the sweep writes can hold: a name ``_check_names`` refuses, a batch, device
    or output-token count below 1, a compute engine busy longer than its step, and a
    field that is not what the sweep derives from the others (``_check_derived``)."""
    for fields, kind in ((NUMBER_FIELDS, "number"), (POSITIVE_FIELDS, "positive"),
                         (FLAG_FIELDS, "flag")):
        _check_fields(row, where, fields, kind)
    _check_names(row, where, NAME_FIELDS)
    for field in (*COUNT_FIELDS, "prompt", "output"):
        v = row.get(field, 1)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ReportError(f"{where}: {field} = {json.dumps(v)} is not a count of at "
                              f"least 1")
    parts = ("logic_mm2", "logic_memory_mm2", "l2_mm2", "phy_mm2")
    for field in ("decode_load_busy", "decode_compute_busy", *parts):
        if row[field] < 0:
            raise ReportError(f"{where}: {field} = {json.dumps(row[field])} is negative")
    hw = _hardware(row, where)
    array = f"{hw.array_rows}x{hw.array_cols}"
    if row["array"] != array:
        raise ReportError(f"{where}: array = {json.dumps(row['array'])} is not its hardware's "
                          f"{array}")
    if row.get("kv_format") == "chunked":
        bits = row.get("kv_bits")
        if isinstance(bits, bool) or not isinstance(bits, int | float) or not 2 <= bits <= 8:
            raise ReportError(f"{where}: kv_bits = {json.dumps(bits)} is not a compressed "
                              f"KV budget (2 to 8 bits)")
    for field in ("decode_compute_busy", "decode_load_busy"):
        if row[field] > row["decode_step_cycles"]:
            raise ReportError(f"{where}: {field} = {row[field]} is more than the step's "
                              f"decode_step_cycles = {row['decode_step_cycles']}")
    # the step's roofline is never below the rate it reaches
    reached = row.get("batch", 1) * hw.clock_hz / row["decode_step_cycles"]
    if row["decode_roofline_tokens_per_s"] < reached * (1 - 1e-9):
        raise ReportError(f"{where}: decode_roofline_tokens_per_s = "
                          f"{row['decode_roofline_tokens_per_s']!r} is below the rate its "
                          f"decode step reaches, batch x clock_hz / decode_step_cycles = "
                          f"{reached!r}")
    if (row["tpot_s"] > 0) != (row["output"] > 1):
        raise ReportError(f"{where}: tpot_s = {json.dumps(row['tpot_s'])} with output = "
                          f"{row['output']} (a workload has decode steps, of positive time, "
                          f"exactly where it has more than one output token)")
    _check_derived(row, where, hw)


def _check_derived(row: dict, where: str, hw) -> None:
    """``ReportError`` for a field of a feasible row that is not what the sweep derives
    from the others (``runner.evaluate_group``, ``sweeps.cost``'s own functions), to a
    relative 1e-9: the
    area as the sum of its parts; the L2's area from ``l2_bytes`` at the node's SRAM
    density; the die's cost from its area, the DRAM's from its capacity, the total as
    their sum; tokens/s as the batch's output tokens over TTFT plus the decode steps'
    time; the rates per mm² and per dollar over the devices'; the DRAM a device needs
    for its model (``runner.device_dram_gbytes``, on ``hw``). A hand edit of one field
    (an ``l2_bytes`` that is not the point's, a ``tokens_per_s`` or ``cost_dollars``
    made better, another model) is named rather than reported; each part is checked
    before a total made of it."""
    from models.config import preset
    from sweeps.cost import DRAM_DOLLARS_PER_GB, NODES, CostError, die_dollars, l2_area_mm2
    from sweeps.runner import device_dram_gbytes
    from sweeps.spec import DEFAULTS

    node = NODES[row["node"]]
    parts = ("logic_mm2", "logic_memory_mm2", "l2_mm2", "phy_mm2")
    area = row["area_mm2"]
    devices, batch, output = row.get("devices", 1), row.get("batch", 1), row["output"]

    def die() -> float:
        try:
            return die_dollars(area, row["node"])[2]
        except (CostError, OverflowError):
            raise ReportError(f"{where}: area_mm2 = {area!r} is not a die a wafer "
                              f"holds") from None

    def dram_gbytes() -> float:
        try:
            return device_dram_gbytes(preset(row["model"]), {**DEFAULTS, **row}, hw)
        except ValueError as e:
            raise ReportError(f"{where}: {e}") from None

    # (field, what it should be, how that is derived), in the order each relies on the
    # ones before: a part before the total made of it
    derived = [
        ("l2_mm2", lambda: l2_area_mm2(row["l2_bytes"], row["node"]),
         f"l2_bytes at {row['node']}'s {node.sram_mm2_per_mbyte} mm²/MiB"),
        ("area_mm2", lambda: sum(row[p] for p in parts), f"the sum of {', '.join(parts)}"),
        ("die_dollars", die,
         f"a {row['node']} wafer's cost over the good dies of area_mm2 on it"),
        ("dram_gbytes", dram_gbytes,
         f"the DRAM a device needs for {row['model']}'s weights and KV cache"),
        ("dram_dollars", lambda: row["dram_gbytes"] * DRAM_DOLLARS_PER_GB,
         f"dram_gbytes at ${DRAM_DOLLARS_PER_GB:g}/GB"),
        ("cost_dollars", lambda: row["die_dollars"] + row["dram_dollars"],
         "die_dollars + dram_dollars"),
        ("tokens_per_s", lambda: batch * output / (row["ttft_s"]
                                                   + row["tpot_s"] * max(1, output - 1)),
         "batch x output tokens over ttft_s + tpot_s x (output - 1)"),
        ("tokens_per_s_per_mm2", lambda: row["tokens_per_s"] / (devices * area),
         "tokens_per_s / (devices x area_mm2)"),
        ("tokens_per_s_per_dollar", lambda: row["tokens_per_s"] / (devices
                                                                   * row["cost_dollars"]),
         "tokens_per_s / (devices x cost_dollars)"),
    ]
    for field, derive, how in derived:
        want = derive()
        if abs(row[field] - want) > 1e-9 * abs(want):
            raise ReportError(f"{where}: {field} = {row[field]!r} is not {how} = {want!r}")


def _check_distinct(rows, settings: list[str], where: dict[int, str]) -> None:
    """``ReportError`` for two rows of one point (the same ``settings``) under different
    keys: a sweep writes each point once, so one of them was edited by hand (a point's
    ``l2_bytes`` or ``prefetch`` changed, its key left), and the figures would draw two
    values at one point."""
    seen: dict[str, str] = {}
    for r in rows:
        point = json.dumps([r.get(k) for k in settings])
        if point in seen:
            raise ReportError(f"{where[id(r)]}: the same point ("
                              + ", ".join(f"{k} = {json.dumps(r.get(k))}" for k in settings)
                              + f") as line {seen[point].rsplit(':', 1)[1]} under another key "
                              f"(a row's settings are not its key's: edited by hand)")
        seen[point] = where[id(r)]


def _order(key: tuple) -> tuple:
    """A sort key for a tuple of field values: numbers by value (batch 2 before 16), the
    rest as text with its runs of digits by value (7nm before 16nm, edge-4x4 before
    edge-16x16)."""
    return tuple((0, v, ()) if isinstance(v, int | float) and not isinstance(v, bool)
                 else (1, 0, tuple(int(part) if i % 2 else part
                                   for i, part in enumerate(re.split(r"(\d+)", str(v)))))
                 for v in key)


def _series(rows, by):
    """Rows grouped by the ``by`` fields, each group sorted by L2 size."""
    groups = defaultdict(list)
    for r in rows:
        groups[tuple(r.get(k) for k in by)].append(r)
    return {k: sorted(v, key=lambda r: r["l2_bytes"])
            for k, v in sorted(groups.items(), key=lambda kv: _order(kv[0]))}


#: The most lines a figure of series draws, matplotlib's ten colours (past them two lines
#: share one): the series whose best point has the most tokens/s per $ (a 1,000-point
#: sweep's 192 series were a legend taller than the page).
MAX_LINES = 10


def _drawn(series: dict) -> tuple[dict, str]:
    """``series`` (``_series``') cut to the ``MAX_LINES`` whose best point has the most
    tokens/s per $, in their order, and a note for the figure saying so ("" where all
    are drawn)."""
    if len(series) <= MAX_LINES:
        return series, ""
    best = sorted(series, key=lambda k: -max(r["tokens_per_s_per_dollar"]
                                             for r in series[k]))[:MAX_LINES]
    kept = set(best)
    return ({k: v for k, v in series.items() if k in kept},
            f"the {MAX_LINES} best of {len(series)} series by tokens/s per $")


def _note(fig, note: str) -> None:
    """``note`` (``_drawn``'s) above a figure of two axes, if any."""
    if note:
        fig.suptitle(f"({note})", fontsize=9)


def _label(keys, values) -> str:
    return ", ".join(f"{k}={'on' if v is True else 'off' if v is False else v}"
                     for k, v in zip(keys, values, strict=True))


def size_label(nbytes: float) -> str:
    """A byte count as a reader reads it: ``512 KiB``, ``1 MiB``, ``1.5 GiB``."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes:g} B"


def _l2_axis(ax, sizes) -> None:
    """An L2-size x axis in bytes: powers of two evenly spaced (log 2), one tick per size
    swept, labelled in KiB/MiB."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: size_label(v)))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.set_xlabel("L2 size")


def _save(fig, out: Path, name: str) -> None:
    with warnings.catch_warnings():     # (long tick labels: bbox "tight" below keeps them)
        warnings.filterwarnings("ignore", "Tight layout not applied", UserWarning)
        fig.tight_layout()
    # bbox "tight": a legend placed beside the axes is kept in the image.
    fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
    fig.savefig(out / f"{name}.svg", bbox_inches="tight")
    plt.close(fig)


def _varying(rows, keys):
    return [k for k in keys if len({json.dumps(r.get(k)) for r in rows}) > 1]


def _optimum(series, metric):
    best = max(series, key=lambda r: r[metric])
    return best["l2_bytes"], best[metric]


def write_report(out: str | Path) -> dict:
    out = Path(out)
    results = _current(out)
    every = results.rows
    rows = [r for r in every if r.get("feasible", True)]
    # the roofline's point resolved before the first figure: a row it cannot read is
    # refused with nothing written
    top = max(rows, key=lambda r: r["tokens_per_s_per_dollar"])
    top_hw = _hardware(top, results.where[id(top)])
    first = ["model", "workload", "array", "node", "devices", "dram_bytes_per_cycle", "hw"]
    # every other setting or hardware field a sweep may vary (clock, link, ...) too, so
    # that no series mixes points that differ in something besides L2 and prefetch
    others = sorted((set(SETTINGS) | HW_FIELDS) - set(first) - {"l2_bytes", "prefetch"})
    group_keys = _varying(rows, first + others) or ["model"]
    # the infeasible points by every setting that varies over all points, feasible or not
    every_keys = _varying(every, first + others)
    _check_distinct(every, every_keys + ["l2_bytes", "prefetch"], results.where)
    findings: dict = {"points": len(rows), "optima": [], "missing": results.missing,
                      "foreign": results.foreign,
                      "infeasible": [{k: r.get(k) for k in (*every_keys, "l2_bytes",
                                                             "prefetch", "reason")}
                                     for r in every if not r.get("feasible", True)]}

    sizes = sorted({r["l2_bytes"] for r in rows})

    # tokens/s against L2, prefetch on and off
    fig, ax = plt.subplots(figsize=(11, 4.5))     # (room for the legend beside it)
    every_series = _series(rows, group_keys + ["prefetch"])
    drawn, cut = _drawn(every_series)
    for key, s in drawn.items():
        ax.plot([r["l2_bytes"] for r in s], [r["tokens_per_s"] for r in s],
                marker="o", linestyle="-" if key[-1] else "--",
                label=_label(group_keys + ["prefetch"], key))
    ax.set(ylabel="tokens/s", title="Throughput against L2 size" + (f"\n({cut})" if cut else ""))
    ax.set_ylim(bottom=0)                    # differences drawn to scale
    _l2_axis(ax, sizes)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))   # off the data
    _save(fig, out, "tokens_vs_l2")

    # performance per cost against L2, optimum marked
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for key, s in every_series.items():
        label = _label(group_keys + ["prefetch"], key)
        for ax, metric in zip(axes, ("tokens_per_s_per_mm2", "tokens_per_s_per_dollar"),
                              strict=True):
            if key not in drawn:     # (its optimum is still a finding)
                continue
            xs = [r["l2_bytes"] for r in s]
            line, = ax.plot(xs, [r[metric] for r in s], marker="o",
                            linestyle="-" if key[-1] else "--", label=label)
            l2, value = _optimum(s, metric)
            ax.plot([l2], [value], marker="*", markersize=14, color=line.get_color())
        l2, value = _optimum(s, "tokens_per_s_per_dollar")
        interior = s[0]["l2_bytes"] < l2 < s[-1]["l2_bytes"]
        run = {r["l2_bytes"] for r in every
               if tuple(r.get(k) for k in group_keys + ["prefetch"]) == key}
        findings["optima"].append({"series": label, "l2_bytes_per_dollar": l2,
                                   "tokens_per_s_per_dollar": value, "interior": interior,
                                   "sizes": len(s), "infeasible_sizes": len(run) - len(s),
                                   "l2_bytes_per_mm2": _optimum(s, "tokens_per_s_per_mm2")[0]})
    # (two lines: a long legend beside narrows the axes, and the titles ran together)
    axes[0].set(ylabel="tokens/s per mm²", title="Performance per area\n(★ optimum)")
    axes[1].set(ylabel="tokens/s per $", title="Performance per dollar\n(★ optimum)")
    _note(fig, cut)
    for ax in axes:
        ax.set_ylim(bottom=0)
        _l2_axis(ax, sizes)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))   # off the data
    _save(fig, out, "perf_per_cost")

    # area breakdown per L2 size (first group): one evenly spaced bar per size swept
    base = next(iter(_series(rows, group_keys).values()))
    base_sizes = sorted({r["l2_bytes"] for r in base})
    by_size = {r["l2_bytes"]: r for r in base}
    parts = ("logic_mm2", "logic_memory_mm2", "l2_mm2", "phy_mm2")
    fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(base_sizes)), 4.5))
    slots = range(len(base_sizes))
    bottom = [0.0] * len(base_sizes)
    for part in parts:
        values = [by_size[s][part] for s in base_sizes]
        ax.bar(slots, values, bottom=bottom, width=0.7,
               label=PART_NAMES[part])
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for x, total in zip(slots, bottom, strict=True):
        ax.annotate(f"{total:.3g}", (x, total), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(list(slots), [size_label(s) for s in base_sizes], rotation=45, fontsize=7)
    ax.set(xlabel="L2 size", ylabel="area (mm²)",
           title=f"Area breakdown ({base[0]['node']}, {base[0]['array']} array)")
    handles, labels = ax.get_legend_handles_labels()      # top to bottom, as stacked
    ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, out, "area")

    # Pareto fronts: tokens/s against area, one per model and workload (the work their
    # tokens/s measure), points hollow without prefetch
    fig, ax = plt.subplots(figsize=(7, 4.5))
    work = [k for k in group_keys if k in ("model", "workload")]
    findings["pareto"] = []
    for n, (key, pts) in enumerate(_series(rows, work).items()):
        colour = f"C{n % 10}"
        name = _label(work, key) if work else "design points"
        for on in (True, False):
            mine = [r for r in pts if r["prefetch"] == on]
            ax.scatter([r["area_mm2"] for r in mine], [r["tokens_per_s"] for r in mine], s=16,
                       facecolors=colour if on else "none", edgecolors=colour, alpha=0.7)
        front, best = [], -1.0
        for r in sorted(pts, key=lambda r: (r["area_mm2"], -r["tokens_per_s"])):
            if r["tokens_per_s"] > best:
                front.append(r)
                best = r["tokens_per_s"]
        ax.plot([r["area_mm2"] for r in front], [r["tokens_per_s"] for r in front], "-",
                color=colour, label=f"{name}: Pareto front")
        findings["pareto"] += [{"series": name, **{k: r[k] for k in (
            "key", "l2_bytes", "area_mm2", "tokens_per_s")}} for r in front]
    ax.scatter([], [], s=16, color="gray", label="prefetch on")
    ax.scatter([], [], s=16, facecolors="none", edgecolors="gray", label="prefetch off")
    ax.set(xscale="log", xlabel="die area (mm²)", ylabel="tokens/s",
           title="Throughput against area")
    ax.set_ylim(bottom=0)
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    areas = [r["area_mm2"] for r in rows]
    if max(areas) < 10 * min(areas):                 # a decade or less: label the minors
        ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # off the data
    _save(fig, out, "pareto")

    # the figures whose x axis the sweep keeps fixed: a note each, captioned as such
    findings["notes"] = [name for name, drawn in (
        ("batch", _batch_figure(rows, [k for k in group_keys if k != "batch"], out)),
        ("kv_budget", _kv_figure(rows, [k for k in group_keys
                                        if k not in ("kv_format", "kv_bits")], out)))
        if not drawn]

    _roofline(top, top_hw, out)

    _breakdown_figure(rows, group_keys, out)

    _write_text(out, rows, findings, group_keys)
    return findings


#: The most bars the time breakdown draws: past them, the best points by tokens/s per $
#: (a bar per point of a 1,000-point sweep was a figure 350 inches wide, 30 s to draw).
BREAKDOWN_BARS = 48


def _breakdown_figure(rows, group_keys: list[str], out: Path) -> list[str]:
    """A bar per point (of the ``BREAKDOWN_BARS`` best by tokens/s per $, where there
    are more): its mid-workload decode step split into the compute engine's busy
    time, then as much of the rest as the load engine was busy (at most the time the
    compute engine waited on DMA: the fast path gives the engines' busy totals, not their
    overlap), then the rest: ``time_breakdown.png``. Returns the bars' labels (the
    varying group fields' values, the L2 size, prefetch), one per bar."""
    shown = sorted(rows, key=lambda r: -r["tokens_per_s_per_dollar"])[:BREAKDOWN_BARS]
    ordered = sorted(shown, key=lambda r: (_order(tuple(r.get(k) for k in group_keys)),
                                           r["prefetch"], r["l2_bytes"]))
    varying = _varying(rows, group_keys)
    names = [" ".join([*(f"{k}={r.get(k)}" for k in varying), size_label(r["l2_bytes"]),
                       "pf" if r["prefetch"] else "no pf"]) for r in ordered]
    compute = [r["decode_compute_busy"] / r["decode_step_cycles"] for r in ordered]
    dma = [min(1 - c, r["decode_load_busy"] / r["decode_step_cycles"])
           for c, r in zip(compute, ordered, strict=True)]
    stall = [max(0.0, 1 - c - d) for c, d in zip(compute, dma, strict=True)]
    fig, ax = plt.subplots(figsize=(max(7, 0.35 * len(ordered)), 4.5))
    at = range(len(ordered))             # positions, not names: equal names stay apart
    ax.bar(at, compute, label="compute engine busy")
    ax.bar(at, dma, bottom=compute, label="compute idle, loads busy (at most)")
    ax.bar(at, stall, bottom=[c + d for c, d in zip(compute, dma, strict=True)],
           label="both idle (at least)")
    ax.set_xticks(list(at), names)
    title = "Decode step time breakdown" + (
        f" (the {len(ordered)} best of {len(rows):,} points by tokens/s per $)"
        if len(ordered) < len(rows) else "")
    ax.set(ylabel="fraction of a decode step", title=title, xlim=(-0.6, len(ordered) - 0.4))
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, out, "time_breakdown")
    return names


def _not_varied(out: Path, name: str, message: str) -> None:
    """A figure whose x axis the sweep keeps fixed: a note saying so, in its place (the
    report's layout does not depend on the spec)."""
    fig, ax = plt.subplots(figsize=(7, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=10, wrap=True)
    _save(fig, out, name)


def _batch_figure(rows, group_keys: list[str], out: Path) -> int:
    """tokens/s and tokens/s per dollar against the batch (sequences decoded together),
    one line per L2 size and prefetch of each group (at most ``MAX_LINES``, ``_drawn``):
    ``batch.png``; where every point has one batch, a note saying so. Returns the lines
    drawn."""
    batches = {r.get("batch", 1) for r in rows}
    if len(batches) == 1:
        _not_varied(out, "batch", f"Every point decodes a batch of {batches.pop()}: "
                    f"an axis batch = [1, 2, 4, ...] plots against it (sweeps/batch.toml).")
        return 0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    keys = group_keys + ["l2_bytes", "prefetch"]
    series, cut = _drawn(_series(rows, keys))
    for key in sorted(series, key=lambda k: (_order(k[:-2]), k[-2], not k[-1])):
        s = sorted(series[key], key=lambda r: r.get("batch", 1))
        label = _label(keys, [size_label(v) if k == "l2_bytes" else v
                              for k, v in zip(keys, key, strict=True)])
        for ax, metric in zip(axes, ("tokens_per_s", "tokens_per_s_per_dollar"), strict=True):
            ax.plot([r.get("batch", 1) for r in s], [r[metric] for r in s], marker="o",
                    linestyle="-" if key[-1] else "--", label=label)
    axes[0].set(xlabel="batch (sequences)", ylabel="tokens/s",
                title="Throughput against batch")
    axes[1].set(xlabel="batch (sequences)", ylabel="tokens/s per $",
                title="Performance per dollar against batch")
    _note(fig, cut)
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, out, "batch")
    return len(series)


def _kv_figure(rows, group_keys: list[str], out: Path) -> int:
    """tokens/s and a mid-workload decode step's KV bytes read against the KV budget
    (``kv_bits`` of compressed chunks: lines; the int8 cache: a cross at 8), one series
    per L2 size and prefetch of each group (at most ``MAX_LINES``, ``_drawn``):
    ``kv_budget.png``; where no point compresses its KV cache, a note saying so. Returns
    the series drawn."""
    if not any(r.get("kv_format") == "chunked" for r in rows):
        _not_varied(out, "kv_budget", "Every point keeps the int8 KV cache: an axis "
                    "kv_format = [\"int8\", \"chunked\"] with kv_bits plots the "
                    "compressed budgets (sweeps/kv_budget.toml).")
        return 0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    keys = group_keys + ["l2_bytes", "prefetch"]
    series, cut = _drawn(_series(rows, keys))
    for key in sorted(series, key=lambda k: (_order(k[:-2]), k[-2], not k[-1])):
        label = _label(keys, [size_label(v) if k == "l2_bytes" else v
                              for k, v in zip(keys, key, strict=True)])
        chunked = sorted((r for r in series[key] if r.get("kv_format") == "chunked"),
                         key=lambda r: r["kv_bits"])
        int8 = [r for r in series[key] if r.get("kv_format", "int8") == "int8"]
        for ax, metric in zip(axes, ("tokens_per_s", "decode_kv_read_bytes"), strict=True):
            if not all(metric in r for r in series[key]):
                continue           # rows of a sweep run before the metric existed
            lines = ax.plot([r["kv_bits"] for r in chunked], [r[metric] for r in chunked],
                            marker="o", linestyle="-" if key[-1] else "--", label=label)
            color = lines[0].get_color()
            ax.scatter([8] * len(int8), [r[metric] for r in int8], marker="x", color=color,
                       s=60, label=f"{label}, int8 cache" if int8 else None)
    axes[0].set(xlabel="KV budget (bits per cached element)", ylabel="tokens/s",
                title="Throughput against the KV budget")
    axes[1].set(xlabel="KV budget (bits per cached element)",
                ylabel="KV bytes read by a decode step", title="Past KV read a decode step")
    _note(fig, cut)
    for ax in axes:
        ax.set_ylim(0, 1.08 * ax.get_ylim()[1])      # the crosses at the top stay whole
        ax.set_xticks([2, 3, 4, 5, 6, 7, 8])
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, out, "kv_budget")
    return len(series)


def matmul_intensity(m: int, k: int, n: int, weights: str = "int8") -> float:
    """MACs per DRAM byte of an ``m x k x n`` matmul reading its ``[n, k]`` weights in
    format ``weights`` (``integer.matrix_bytes``) and int8 activations in and out."""
    from models.integer import matrix_bytes

    return m * k * n / (matrix_bytes(n, k, weights) + m * (k + n))


def _roofline(row: dict, hw, out: Path) -> None:
    """The roofline of a point's hardware ``hw``, with the model's matmuls of a decode
    step and of a prefill placed at their intensity (MACs per DRAM byte) and attainable
    rate."""
    from models.config import preset
    from sweeps.analytic import prefill_chunks

    cfg = preset(row["model"])
    peak = hw.pes                                   # MACs per cycle
    bw = hw.dram_bytes_per_cycle                    # bytes per cycle
    ops = {"q": (cfg.d_model, cfg.q_dim), "k/v": (cfg.d_model, cfg.kv_dim),
           "o": (cfg.q_dim, cfg.d_model), "gate/up": (cfg.d_model, cfg.d_ff),
           "down": (cfg.d_ff, cfg.d_model), "lm_head": (cfg.d_model, cfg.vocab_size)}
    # A prefill reads the weights once per chunk, and computes the LM head for the
    # prompt's last token only.
    chunk = max(t for _, t in prefill_chunks(cfg, hw, row["prompt"]))
    phases = []                                     # (phase, marker, colour, points)
    for phase, rows_, marker, colour in (("decode", 1, "o", "tab:blue"),
                                         (f"prefill ({chunk}-token chunks)", chunk, "s",
                                          "tab:orange")):
        points = []
        for name, (k, n) in ops.items():
            m = 1 if name == "lm_head" else rows_
            # the projections in the point's weight format, the LM head int8
            fmt = "int8" if name == "lm_head" else row.get("weights", "int8")
            intensity = matmul_intensity(m, k, n, fmt)
            points.append((intensity, min(peak, bw * intensity), name))
        phases.append((phase, marker, colour, sorted(points)))
    achieved = cfg.n_params / max(1, row["decode_step_cycles"])     # ~one MAC per weight
    ridge = peak / bw
    every = [x for *_, points in phases for x, _, _ in points]
    lo_x, hi_x = min(every + [ridge]) / 4, max(every + [ridge]) * 4
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs = [lo_x * (hi_x / lo_x) ** (i / 200) for i in range(201)]
    ax.plot(xs, [min(peak, bw * x) for x in xs], "k-",
            label=f"roofline ({hw.name}: {peak:g} MACs/cycle, {bw:g} bytes/cycle)")
    for phase, marker, colour, points in phases:
        # prefill's hollow and larger: its LM head (one row) is where decode's is
        ax.scatter([x for x, _, _ in points], [y for _, y, _ in points], marker=marker,
                   s=30 if marker == "o" else 80, zorder=4 if marker == "o" else 3,
                   facecolors=colour if marker == "o" else "none", edgecolors=colour,
                   linewidths=1.5, label=f"{phase} matmuls")
        # operators of nearly one intensity are named together, once
        groups: list[list] = []
        for x, y, name in points:
            if groups and x < 1.25 * groups[-1][0][0]:
                groups[-1].append((x, y, name))
            else:
                groups.append([(x, y, name)])
        for g in groups:
            ax.annotate(", ".join(name for _, _, name in g), (g[0][0], g[0][1]),
                        textcoords="offset points", xytext=(0, -14 if marker == "o" else 8),
                        ha="center", fontsize=7, color=colour,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                              "alpha": 0.8})
    ax.axhline(achieved, color="gray", linestyle=":",
               label=f"decode step achieved (L2 {size_label(row['l2_bytes'])}, prefetch "
                     f"{'on' if row['prefetch'] else 'off'})")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (MACs per DRAM byte)",
           ylabel="MACs per cycle", title="Roofline with the model's operators",
           xlim=(lo_x, hi_x), ylim=(min(achieved, bw * lo_x) / 2, 2 * peak))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, out, "roofline")


#: The area breakdown's parts as the legend names them (``sweeps.cost``'s fields)
PART_NAMES = {"logic_mm2": "logic", "logic_memory_mm2": "logic memories", "l2_mm2": "L2",
              "phy_mm2": "DRAM PHY and controller"}
NOT_VARIED = ("Not drawn: the sweep keeps this figure's x axis fixed; the note names the "
              "axis that would plot it.")
CAPTIONS = {
    "tokens_vs_l2": "Tokens/s (whole workload: prefill then decode) against L2 size; solid "
                    f"with prefetch, dashed without (at most {MAX_LINES} series: those whose "
                    "best point has the most tokens/s per $).",
    "perf_per_cost": "Performance per area and per dollar against L2 size; the star marks "
                     f"each series' optimum (at most {MAX_LINES} series, both panels: those "
                     "whose best point has the most tokens/s per $).",
    "batch": "Tokens/s (whole workload: the batch's prefills one after another, then "
             "decode steps of all its sequences, the weights read once a step) and tokens/s "
             "per dollar (DRAM bought for every sequence's KV at the model's context) "
             "against the batch, one line per L2 size; solid with prefetch, dashed without.",
    "kv_budget": "Tokens/s and the past KV's bytes a mid-workload decode step reads "
                 "against the KV budget: compressed chunks (lines, "
                 "their channels averaging that many bits) and the int8 cache (crosses at "
                 "8), one series per L2 size; solid with prefetch, dashed without.",
    "area": "Die area by part against L2 size, on the first series' node and array (its "
            "title names them).",
    "pareto": "Tokens/s against die area for every point (hollow: prefetch off), with the "
              "Pareto front of each model and workload.",
    "roofline": "Roofline of the best point's hardware (tokens/s per $) with the model's "
                "matmuls (circles: decode, squares: prefill, in the point's prefill "
                "chunks) at their attainable rate; dotted: the decode step's achieved MAC "
                "rate.",
    "time_breakdown": "A decode step (mid-workload KV length) per point (at most "
                      f"{BREAKDOWN_BARS}: the best by tokens/s per $), split into the "
                      "compute engine's busy time, as much of the rest as the load engine "
                      "was busy (at most the time spent waiting on DMA: the engines' "
                      "overlap is not recorded), and the rest.",
}


def _write_text(out: Path, rows, findings, group_keys) -> None:
    best = sorted(rows, key=lambda r: -r["tokens_per_s_per_dollar"])[:10]
    cols = ["l2_bytes", "prefetch", *group_keys, "tokens_per_s", "ttft_s", "tpot_s",
            "area_mm2", "cost_dollars", "tokens_per_s_per_mm2", "tokens_per_s_per_dollar"]
    cols = [c for c in dict.fromkeys(cols) if all(c in r for r in best)]
    headers = {"l2_bytes": "L2", "prefetch": "prefetch", "tokens_per_s": "tokens/s",
               "ttft_s": "TTFT (s)", "tpot_s": "TPOT (ms)", "area_mm2": "area (mm²)",
               "cost_dollars": "cost ($)", "tokens_per_s_per_mm2": "tokens/s/mm²",
               "tokens_per_s_per_dollar": "tokens/s/$"}

    def fmt(col, v):
        if col == "l2_bytes":
            return size_label(v)
        if col == "prefetch":
            return "on" if v else "off"
        if col == "tpot_s":
            return f"{1e3 * v:.3g}"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = [optimum_line(o) + "." for o in findings["optima"]]
    spec = _spec_summary(rows, group_keys, findings["infeasible"])

    def shown(k, v):                 # an infeasible point's setting as the tables show it
        return (size_label(v) if k == "l2_bytes" else fmt("prefetch", v) if k == "prefetch"
                else v)
    infeasible = [", ".join(f"{k} {shown(k, v)}" for k, v in p.items()
                            if k != "reason" and v is not None) + f": {p['reason']}"
                  for p in findings["infeasible"]]
    counted = f" from `{out / 'results.jsonl'}`"
    counted += (f"; {len(infeasible)} infeasible (below)" if infeasible else "")
    if findings["missing"]:
        counted += (f"; {findings['missing']} of the spec's points not run yet (an "
                    f"interrupted sweep: `accel sweep` again resumes it)")
    if findings["foreign"]:
        counted += (f"; {findings['foreign']} rows of results.jsonl left out (not points of "
                    f"the spec last run)")
    points = f"{len(rows)} feasible design point{'s' if len(rows) > 1 else ''}"
    md = ["# Sweep report", "", f"{points}{counted}; {spec}.", "", "## Findings", ""]
    md += [f"- {line}" for line in lines]
    if infeasible:
        md += ["", "## Infeasible points (left out of the figures)", ""]
        md += [f"- {line}" for line in infeasible]
    md += ["", "## Best points (tokens/s per $)", "",
           "| " + " | ".join(headers.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(fmt(c, r[c]) for c in cols) + " |" for r in best]
    md += ["", "## Figures", ""]
    captions = {name: NOT_VARIED if name in findings["notes"] else CAPTIONS[name]
                for name in FIGURES}
    for name in FIGURES:
        md += [f"![{name}]({name}.png)", "", captions[name], ""]
    (out / "report.md").write_text("\n".join(md) + "\n")

    esc = html.escape
    body = ["<header><h1>Sweep report</h1>",
            f"<p>{esc(points)}{esc(counted)}; {esc(spec)}.</p>"
            "</header>", "<section><h2>Findings</h2><ul>"]
    body += [f"<li>{esc(line)}</li>" for line in lines]
    if infeasible:
        body += ["</ul></section>", "<section><h2>Infeasible points (left out of the "
                 "figures)</h2><ul>"]
        body += [f"<li>{esc(line)}</li>" for line in infeasible]
    body += ["</ul></section>", "<section><h2>Best points (tokens/s per $)</h2><table>",
             "<thead><tr>" + "".join(f"<th>{esc(headers.get(c, c))}</th>" for c in cols)
             + "</tr></thead><tbody>"]
    body += ["<tr>" + "".join(f"<td>{esc(fmt(c, r[c]))}</td>" for c in cols) + "</tr>"
             for r in best]
    body += ["</tbody></table></section>", "<section><h2>Figures</h2><div class='grid'>"]
    for name in FIGURES:
        wide = (" class='wide'" if name in ("tokens_vs_l2", "perf_per_cost", "batch",
                                             "kv_budget", "time_breakdown") else "")
        body += [f"<figure{wide}><a href='{name}.svg'><img src='{name}.png' alt='{name}'></a>",
                 f"<figcaption>{esc(captions[name])}</figcaption></figure>"]
    body += ["</div></section>"]
    (out / "report.html").write_text(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>Sweep report</title><style>{STYLE}</style></head><body><main>"
        + "\n".join(body) + "</main></body></html>\n")


def optimum_line(o: dict) -> str:
    """A series' optimum over L2 (``findings["optima"]``) in words; a series of one
    feasible L2 size has none."""
    if o["sizes"] == 1:
        what = (f"only L2 = {size_label(o['l2_bytes_per_dollar'])} of the "
                f"{1 + o['infeasible_sizes']} sizes run is feasible" if o["infeasible_sizes"]
                else
                f"only L2 = {size_label(o['l2_bytes_per_dollar'])} was run")
        return f"{o['series']}: {what} ({o['tokens_per_s_per_dollar']:.4g} tokens/s/$), " \
               f"no optimum over L2"
    # (a random sample may run a series at a few sizes only: how many is said)
    return (f"{o['series']}: tokens/s per $ peaks at L2 = "
            f"{size_label(o['l2_bytes_per_dollar'])} of the {o['sizes']} sizes run "
            f"({'an interior optimum' if o['interior'] else 'at the edge of the sizes run'}, "
            f"{o['tokens_per_s_per_dollar']:.4g} tokens/s/$); per mm² at "
            f"{size_label(o['l2_bytes_per_mm2'])}")


def _spec_summary(rows, group_keys, infeasible=()) -> str:
    """What the sweep held fixed and what it varied, in a sentence; the L2 sizes are those
    run, ``infeasible`` points' (``findings["infeasible"]``) included."""
    fixed, held = [], set()
    for key in ("model", "hw", "array", "node"):
        values = sorted({str(r.get(key)) for r in rows})
        if len(values) == 1 and values[0] != "None":
            fixed.append(f"{key} {values[0]}")
            held.add(key)
    sizes = sorted({r["l2_bytes"] for r in (*rows, *infeasible)})
    # (a model or node that varies is named with the rest: it was in neither list)
    varied = [f"L2 {size_label(sizes[0])}" + (f" to {size_label(sizes[-1])}"
                                              if len(sizes) > 1 else "")] + [
        k for k in group_keys if k not in held]
    prefetch = ["prefetch on/off"] if len({r["prefetch"] for r in rows}) > 1 else []
    return ", ".join(fixed) + "; varied: " + ", ".join(varied + prefetch)


STYLE = """
body { margin: 0; background: #f6f7f9; color: #1d2330;
       font: 15px/1.5 system-ui, -apple-system, 'Segoe UI', sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p { margin: 0 0 16px; color: #4a5262; }
section { background: #fff; border: 1px solid #dde1e8; border-radius: 8px;
          padding: 12px 20px 16px; margin: 16px 0; }
h2 { font-size: 18px; margin: 8px 0 12px; }
ul { margin: 0; padding-left: 20px; }
li { margin: 4px 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px;
        font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid #e6e9ef; text-align: right;
         white-space: nowrap; }
th { background: #eef1f6; font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafbfc; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr));
        gap: 16px; }
figure { margin: 0; }
figure.wide { grid-column: 1 / -1; }
figure img { width: 100%; height: auto; border: 1px solid #e6e9ef; border-radius: 4px; }
figcaption { font-size: 13px; color: #4a5262; margin-top: 4px; }
"""
