"""Sweep specifications: a TOML file to a validated list of design points.

Contract
--------
``load_spec(path)`` reads a spec and returns a ``Spec``; ``spec.points()`` the design
points (dicts of every setting, in a stable order). Everything is checked before any
point runs: an unknown section or axis, an empty or malformed range, an unknown model,
hardware preset, node or workload, a value out of the hardware's range, a model whose
heads or MLP do not split over a point's devices, a weight format a model's projections
cannot take, a workload longer than the model's context, the flash tier's fields (no
metric a sweep reports reads them). ``SpecError`` names the file and the line.

A spec::

    [sweep]
    sampling = "grid"            # or "random", with samples = N and seed = S: N of the
                                 # grid's points (at most all), drawn without replacement

    [fixed]                      # settings every point shares (all optional)
    hw = "edge-16x16"            # a preset or TOML file: the base hardware description
    model = "sheared-llama-1.3b"
    node = "16nm"
    devices = 1
    prefetch = true
    workload = "liso"
    weights = "int8"             # the projection weights' format: "int8" or "mxint4"
    batch = 1                    # sequences decoded together (driver.compile_batch)
    kv_format = "int8"           # the KV cache: "int8" rows, or "chunked" (compressed
    kv_bits = 8.0                # chunks, LLMS) whose channels average kv_bits (2 to 8);
                                 # with kv_format an axis, its int8 points run at 8 once
    link_gbytes_per_s = 16.0
    link_latency_us = 2.0

    [workloads]                  # named workloads, exact lengths; each one defined is
                                 # run (fixed or on the workload axis)
    liso = { prompt = 1024, output = 128 }

    [axes]                       # a HardwareConfig field (not flash_*), or a setting above
    l2_bytes = { geometric = [65536, 134217728], factor = 2 }   # low * factor**i <= high,
                                                               # each rounded to an integer
    prefetch = [true, false]
    dram_bytes_per_cycle = { range = [16, 64, 16] }     # start, stop (inclusive), step

Tested by tests/sweeps/test_sweeps.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from arch.hardware import SYSTEM_FIELDS, HardwareConfig, HardwareError, load_hardware
from arch.occupancy import kv_budget_widths
from compiler.driver import MAX_BATCH
from models.config import preset
from models.integer import WEIGHT_FORMATS, check_weight_format
from sweeps.analytic import Link
from sweeps.cost import NODES

SETTINGS = {"hw": str, "model": str, "node": str, "devices": int, "prefetch": bool,
            "workload": str, "link_gbytes_per_s": float, "link_latency_us": float,
            "weights": str, "batch": int, "kv_format": str, "kv_bits": float}
DEFAULTS = {"hw": "edge-16x16", "model": "sheared-llama-1.3b", "node": "16nm", "devices": 1,
            "prefetch": True, "workload": "liso", "weights": "int8", "batch": 1,
            "kv_format": "int8", "kv_bits": 8.0,
            "link_gbytes_per_s": Link.gbytes_per_s, "link_latency_us": Link.latency_us}
KV_FORMATS = ("int8", "chunked")
DEFAULT_WORKLOADS = {"liso": {"prompt": 1024, "output": 128},
                     "silo": {"prompt": 128, "output": 1024}}
# the system's fields (the flash tier) change no metric a sweep reports: refused by name
HW_FIELDS = {f.name for f in dataclasses.fields(HardwareConfig)} - {"name", *SYSTEM_FIELDS}
SECTIONS = {"sweep", "fixed", "workloads", "axes"}
#: The keys of ``[sweep]``.
SWEEP_KEYS = ("sampling", "samples", "seed")


MAX_POINTS = 100_000          # a grid larger than this is refused before it is expanded


class SpecError(ValueError):
    """A sweep specification that cannot run; the message names file and line."""


@dataclass
class Spec:
    path: Path
    sampling: str
    samples: int
    seed: int
    fixed: dict
    workloads: dict[str, dict]
    axes: dict[str, list] = field(default_factory=dict)

    def points(self) -> list[dict]:
        """The design points: the grid's (``grid``), or ``samples`` of them drawn at random
        without replacement (``seed``)."""
        points = self.grid()
        if self.sampling == "random":
            rng = random.Random(self.seed)
            points = rng.sample(points, self.samples)
        return points

    def grid(self) -> list[dict]:
        """Every distinct point of the axes' grid over the fixed settings (an int8 KV
        cache counted once whatever the ``kv_bits`` axis)."""
        names = list(self.axes)
        grid = [dict(zip(names, combo, strict=True))
                for combo in itertools.product(*(self.axes[n] for n in names))]
        points = [{**self.fixed, **p} for p in grid]
        for p in points:
            p["kv_bits"] = float(p["kv_bits"])
            if "kv_format" in self.axes and p["kv_format"] == "int8":
                p["kv_bits"] = 8.0      # a compressed cache's budget: int8 runs once, at 8
        unique: dict[str, dict] = {}
        for p in points:
            unique.setdefault(repr(sorted(p.items())), p)
        return list(unique.values())


def _line(text: str, key: str, section: str | None) -> int:
    """The line of ``key =`` (inside ``[section]`` when given; else of ``key =`` or the
    table ``[key]``), or of the table ``[section.key]``, or of the section."""
    lines = text.splitlines()
    if section:
        for i, line in enumerate(lines):
            if re.match(rf"\s*\[\s*{re.escape(section)}\s*\.\s*{re.escape(key)}\s*\]", line):
                return i + 1
    start = 0
    if section:
        for i, line in enumerate(lines):
            if re.match(rf"\s*\[{re.escape(section)}\]\s*(#.*)?$", line):
                start = i
                break
    for i in range(start, len(lines)):
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]) or (
                not section and re.match(rf"\s*\[{re.escape(key)}[.\]]", lines[i])):
            return i + 1
    return start + 1


def _expand(name: str, value, fail) -> list:
    if isinstance(value, list):
        values = value
    elif isinstance(value, dict) and set(value) <= {"geometric", "factor"} and "geometric" in value:
        bounds, factor = value["geometric"], value.get("factor", 2)
        if not (isinstance(bounds, list) and len(bounds) == 2):
            fail(f"geometric needs [low, high], not {bounds!r}")
        lo, hi = bounds
        if not (all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi))
                and isinstance(factor, int | float) and not isinstance(factor, bool)
                and lo > 0 and 1 < factor < math.inf):
            fail("geometric needs positive integer bounds and a finite factor above 1")
        values, v = [], lo
        while v <= hi:                  # (a float factor: each value rounded to an integer)
            values.append(round(v))
            if len(values) > MAX_POINTS:       # (counted as built: a factor near 1 is long)
                fail(f"more than {MAX_POINTS:,} values (a sweep takes at most "
                     f"{MAX_POINTS:,} points)")
            v *= factor
    elif isinstance(value, dict) and set(value) == {"range"}:
        bounds = value["range"]
        if not (isinstance(bounds, list) and len(bounds) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) for v in bounds)):
            fail(f"range needs [start, stop, step], integers, not {bounds!r}")
        start, stop, step = bounds
        if step <= 0:
            fail("range needs [start, stop, step] with a positive step")
        count = max(0, (stop - start) // step + 1)     # (len() of a range overflows)
        if count > MAX_POINTS:
            fail(f"{count:,} values (a sweep takes at most {MAX_POINTS:,} points)")
        values = list(range(start, stop + 1, step))
    else:
        fail("an axis is a list of values, { geometric = [low, high], factor = F } or "
             "{ range = [start, stop, step] }")
    if not values:
        fail("the axis is empty")
    if len(values) > MAX_POINTS:
        fail(f"{len(values):,} values (a sweep takes at most {MAX_POINTS:,} points)")
    seen = set()
    for v in values:
        if repr(v) in seen:
            fail(f"the value {v!r} appears twice")
        seen.add(repr(v))
    return values


def is_workload(w) -> bool:
    """Whether ``w`` is a workload: ``{"prompt": N, "output": N}``, positive integers (a
    spec's ``[workloads]`` entry, and ``sweep.json``'s record of it)."""
    return (isinstance(w, dict) and set(w) == {"prompt", "output"}
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                    for v in w.values()))


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such sweep specification"
                        + (" (a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML ({e})") from None

    def fail_at(key, section, message):
        raise SpecError(f"{path}:{_line(text, key, section)}: {message}")

    for section in data:
        if section not in SECTIONS:
            fail_at(section, None, f"unknown section [{section}] (known: "
                    f"{', '.join(sorted(SECTIONS))})")
        if not isinstance(data[section], dict):
            fail_at(section, None, f"{section} must be a table ([{section}]), not "
                    f"{data[section]!r}")
    sweep = data.get("sweep", {})
    for key in sweep:
        if key not in SWEEP_KEYS:
            fail_at(key, "sweep", f"unknown key {key!r} in [sweep] (known: "
                    f"{', '.join(SWEEP_KEYS)})")
    sampling = sweep.get("sampling", "grid")
    if sampling not in ("grid", "random"):
        fail_at("sampling", "sweep", f"sampling must be 'grid' or 'random', not {sampling!r}")
    samples = sweep.get("samples", 0)
    if "samples" in sweep and (not isinstance(samples, int) or isinstance(samples, bool)
                               or samples < 1):
        fail_at("samples", "sweep", f"samples must be an integer N >= 1, not {samples!r}")
    if sampling == "random" and not samples:
        fail_at("samples", "sweep", "random sampling needs samples = N >= 1")
    seed = sweep.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        fail_at("seed", "sweep", f"seed must be an integer >= 0, not {seed!r} (random.Random "
                "draws alike for -S and S)")
    for key in ("samples", "seed"):
        if sampling == "grid" and key in sweep:
            fail_at(key, "sweep", f"{key} is for sampling = \"random\": a grid runs every "
                    f"point")

    workloads = dict(DEFAULT_WORKLOADS)
    for name, w in data.get("workloads", {}).items():
        if not is_workload(w):
            fail_at(name, "workloads", f"workload {name!r} needs prompt = N and output = N, "
                    "positive integers")
        workloads[name] = w

    fixed = dict(DEFAULTS)
    for key in [*data.get("fixed", {}), *data.get("axes", {})]:
        if key in SYSTEM_FIELDS:
            fail_at(key, "axes" if key in data.get("axes", {}) else "fixed",
                    f"{key} is read only by the context-switch model "
                    f"(sweeps.analytic.context_switch), not by any metric a sweep reports")
    for key, value in data.get("fixed", {}).items():
        if key not in SETTINGS and key not in HW_FIELDS:
            fail_at(key, "fixed", f"unknown setting {key!r} (settings: "
                    f"{', '.join(SETTINGS)}; or a hardware field)")
        fixed[key] = value

    axes = {}
    for name, value in data.get("axes", {}).items():
        if name not in SETTINGS and name not in HW_FIELDS:
            fail_at(name, "axes", f"unknown axis {name!r} (axes: any hardware field — "
                    f"{', '.join(sorted(HW_FIELDS))} — or {', '.join(SETTINGS)})")
        if name in data.get("fixed", {}):
            fail_at(name, "axes", f"{name} is both fixed and an axis: give it in one of "
                    "[fixed] and [axes]")
        axes[name] = _expand(name, value,
                             lambda m, name=name: fail_at(name, "axes", f"axis {name}: {m}"))
    if not axes:
        fail_at("axes", None, "no axes: a sweep needs an [axes] table with at least one "
                "axis (e.g. l2_bytes = [1048576, 4194304])")
    spec = Spec(path, sampling, samples, seed, fixed, workloads, axes)
    grid = 1
    for values in axes.values():
        grid *= len(values)
    if grid > MAX_POINTS:
        fail_at(next(iter(axes)), "axes", f"the axes make {grid:,} points (at most "
                f"{MAX_POINTS:,}, sampled or not)")

    # Every value is checked now, so that no point fails halfway through a sweep.
    for name, values in [(k, [v]) for k, v in fixed.items()] + list(axes.items()):
        section = "axes" if name in axes else "fixed"
        for v in values:
            problem = _check_value(name, v, spec)
            if problem:
                fail_at(name, section, problem)
    distinct = len(spec.grid()) if sampling == "random" else samples
    if samples > distinct:
        fail_at("samples", "sweep", f"samples = {samples:,} is more than the axes' grid of "
                f"{distinct:,} points (drawn without replacement; sampling = \"grid\" "
                f"runs them all)")
    # a workload defined and never run is a slip (a spec that defined `short` and named
    # none ran the default `liso`, 1024 in / 128 out, unsaid)
    used = {v for v in axes.get("workload", [fixed["workload"]]) if isinstance(v, str)}
    for name in data.get("workloads", {}):
        if name not in used:
            fail_at(name, "workloads", f"workload {name!r} is defined but no point runs it "
                    f"(the points run {', '.join(map(repr, sorted(used)))}): name it in "
                    f"[fixed] workload = \"{name}\" or in the workload axis")
    # a point's key hashes its workload's lengths, not its name (sweeps.runner): two
    # workloads run of one length would be one point written twice
    lengths: dict[tuple, str] = {}
    for name in [n for n in workloads if n in used]:     # (named at the later one)
        twin = lengths.setdefault((workloads[name]["prompt"], workloads[name]["output"]), name)
        if twin != name:
            fail_at(name if name in data.get("workloads", {}) else twin, "workloads",
                    f"workloads {twin!r} and {name!r} are both prompt = "
                    f"{workloads[name]['prompt']}, output = {workloads[name]['output']}: run "
                    f"one of them")
    for p in spec.points():
        problem = _check_point(p, spec)
        if problem:
            key, message = problem
            fail_at(key, "axes" if key in axes else "fixed", message)
        try:
            point_hardware(p)
        except HardwareError as e:
            named = [k for k in (*axes, *fixed) if k in HW_FIELDS and str(e).startswith(k)]
            key = named[0] if named else next((k for k in axes if k in HW_FIELDS), "hw")
            fail_at(key, "axes" if key in axes else "fixed", f"a point's hardware is invalid: {e}")
    return spec


def _check_value(name: str, value, spec: Spec) -> str | None:
    kind = SETTINGS.get(name)
    if kind is not None and (not (isinstance(value, kind) or kind is float
                                  and isinstance(value, int))
                             or kind is not bool and isinstance(value, bool)):
        return f"{name} must be {kind.__name__}, not {value!r}"
    if name == "model":
        try:
            preset(value)
        except (KeyError, ValueError) as e:
            return f"unknown model {value!r} ({e})"
    elif name == "node" and value not in NODES:
        return f"unknown node {value!r} (known: {', '.join(NODES)})"
    elif name == "weights" and value not in WEIGHT_FORMATS:
        return f"unknown weight format {value!r} (known: {', '.join(WEIGHT_FORMATS)})"
    elif name == "workload" and value not in spec.workloads:
        return f"unknown workload {value!r} (defined: {', '.join(spec.workloads)})"
    elif name == "hw":
        try:
            load_hardware(value)
        except HardwareError as e:
            return str(e)
    elif name == "devices" and value < 1:
        return f"devices must be at least 1, not {value}"
    elif name == "batch" and not 1 <= value <= MAX_BATCH:
        return f"batch must be 1 to {MAX_BATCH} (compiler.driver.MAX_BATCH), not {value}"
    elif name == "kv_format" and value not in KV_FORMATS:
        return f"unknown KV format {value!r} (known: {', '.join(KV_FORMATS)})"
    elif name == "kv_bits":
        try:
            kv_budget_widths(1, value)
        except ValueError as e:
            return f"kv_bits: {e}"
    elif name in ("link_gbytes_per_s", "link_latency_us"):
        try:                                    # the link's own bounds
            Link(**{name.removeprefix("link_"): value})
        except ValueError as e:
            return f"{name}: {e}"
    return None


def _check_point(point: dict, spec: Spec) -> tuple[str, str] | None:
    """``(setting, reason)`` if the point's model cannot run its workload on its
    devices: heads or MLP that do not split over them, weights in a format its
    projections cannot take (``integer.check_weight_format``), or a workload longer than
    the model's context. (An L2 too small for the model is a result, not an error: the point
    is recorded as infeasible.)"""
    from sweeps.analytic import shard

    cfg = preset(point["model"])
    try:
        shard(cfg, point["devices"])
    except ValueError as e:
        return "devices", f"a point cannot run: {e}"
    try:
        check_weight_format(shard(cfg, point["devices"]), point["weights"])
    except ValueError as e:
        return "weights", f"a point cannot run: {e}"
    if point["kv_format"] == "int8" and point["kv_bits"] != 8:
        return "kv_bits", (f"a point cannot run: kv_bits = {point['kv_bits']} is a compressed "
                           f"cache's budget; the int8 cache (kv_format = 'int8') stores 8 "
                           f"(give kv_format = 'chunked', or make kv_format an axis)")
    if point["batch"] > 1 and point["devices"] > 1:
        return "batch", (f"a point cannot run: a batch of {point['batch']} on "
                         f"{point['devices']} devices (batched decode is timed on one device)")
    w = spec.workloads[point["workload"]]
    if w["prompt"] + w["output"] > cfg.max_seq_len:
        return "workload", (f"a point cannot run: workload {point['workload']!r} "
                            f"({w['prompt']} + {w['output']} tokens) is longer than "
                            f"{cfg.name}'s context of {cfg.max_seq_len} tokens")
    return None


def point_hardware(point: dict) -> HardwareConfig:
    """The hardware description of a point: the base preset with the point's fields."""
    hw = load_hardware(point["hw"])
    changes = {k: v for k, v in point.items() if k in HW_FIELDS}
    changes["prefetch"] = point.get("prefetch", hw.prefetch)
    return hw.replace(**changes)
