"""A build folder that vouches for itself: written by ``save_build``, refused by
``load_build`` unless every file is the one the compiler wrote.

Contract
--------
``save_build(build, folder, extra_files)`` writes:

* ``<program>.bin`` (program file, CRC-32 in its header) and ``<program>.s`` (listing)
  per program. The ``.bin`` is the one copy of the program: ``dram.bin`` leaves the
  program regions empty and ``load_build`` places each program file there.
* ``dram.bin``: the DRAM image (builds with weights only).
* any ``extra_files`` (``{name: source path}``, e.g. the tokenizer), copied in.
* ``manifest.json``: the model, the hardware, the prompt, the memory map, the programs,
  the SHA-256 of every other file (``files``) and of the manifest's own content
  (``manifest_sha256``, over its canonical JSON without that key).

``load_build(folder)`` checks, before anything runs: the manifest parses, has every
field with its type and its own hash; every file it lists has its hash; the programs are
``prefill`` then ``decode_000``, ``decode_001``, ... with the prompt's and each new
token's positions (one program per new token after the first); each program's region in
the memory map is where the manifest places it and holds its instructions; the regions
lie inside the image without overlapping; the image has the memory map's size and its
token buffer starts with the prompt. Anything else raises ``BuildError``, one line
naming the file and what is wrong.

``read_only_regions(build)`` are the regions no program may write (the constants below
``rw_base``, the block table and the programs); ``accel.runtime`` compares them
after every run on every simulator.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from arch.isa import INSTR_BYTES
from compiler.asm import (
    ProgramFileError,
    disassemble,
    encode_program,
    read_program,
    write_program,
)

MANIFEST = "manifest.json"
RECOMPILE = "recompile it with `accel compile`"


class BuildError(ValueError):
    """A build folder whose files do not match its manifest, or a manifest that does not
    describe a build: one line naming the file and the reason."""


class RunIntegrityError(RuntimeError):
    """A run changed DRAM that no program may write (``accel.runtime``)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _content_hash(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def save_build(build, folder: str | Path, extra_files: dict[str, Path] | None = None) -> Path:
    """Write ``build`` (a ``compiler.driver.Build``) into ``folder``; see the contract."""
    folder = Path(folder)
    _clear_previous_build(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for p in build.programs:
        write_program(folder / f"{p.name}.bin", p.instrs)
        (folder / f"{p.name}.s").write_text(
            f"# {p.name}: {p.kind}, tokens {p.start}..{p.start + p.n_tokens - 1}, "
            f"{len(p.instrs)} instructions\n" + disassemble(p.instrs, numbered=True))
        names += [f"{p.name}.bin", f"{p.name}.s"]
    if build.image.data is not None:
        data = build.image.data.copy()
        for p in build.programs:
            r = build.mmap[f"program:{p.name}"]
            data[r.offset:r.end] = 0
        (folder / "dram.bin").write_bytes(data.tobytes())
        names.append("dram.bin")
    for name, source in (extra_files or {}).items():
        shutil.copy(source, folder / name)
        names.append(name)
    manifest = build.manifest()
    manifest["files"] = {name: _sha256(folder / name) for name in sorted(names)}
    manifest["manifest_sha256"] = _content_hash(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return folder


def check_build_folder(folder: str | Path) -> None:
    """Raise ``BuildError`` unless a build may be written into ``folder``: absent or
    empty, or a build folder (its manifest and the files it lists, nothing else). A
    file, or a folder holding other files, is refused. ``accel compile`` asks before it
    compiles, ``save_build`` again before it writes."""
    _previous_build_files(Path(folder))


def _previous_build_files(folder: Path) -> set[str]:
    """The names of the previous build's files in ``folder`` (its manifest's list and the
    manifest), empty if it is absent or empty; ``BuildError`` as ``check_build_folder``."""
    if not folder.exists():
        return set()
    if not folder.is_dir():
        raise BuildError(f"{folder}: is a file; a build is written into a folder")
    present = {f.name for f in folder.iterdir()}
    if not present:
        return set()
    listed: set[str] = set()
    if MANIFEST in present:
        try:
            listed = set(json.loads((folder / MANIFEST).read_text())["files"])
        except (OSError, ValueError, KeyError, TypeError):
            listed = set()
        listed &= present            # plain names of files in this folder, nothing else
    others = present - listed - {MANIFEST}
    if MANIFEST not in present or others:
        raise BuildError(f"{folder}: is not empty and not a build folder written by accel "
                         f"compile (it holds {sorted(others or present)[0]!r}); choose a new "
                         f"or empty folder")
    return listed | {MANIFEST}


def _clear_previous_build(folder: Path) -> None:
    """Make ``folder`` ready for a new build: the previous build's files are removed first,
    so that none stays beside the new one (``check_build_folder`` refuses anything else)."""
    for name in _previous_build_files(folder):
        (folder / name).unlink(missing_ok=True)


# -- reading and checking ------------------------------------------------------------------

_FIELDS = {"model": dict, "model_name": str, "hardware": dict, "prefetch": bool,
           "with_weights": bool, "prompt": list, "max_new_tokens": int, "memory_map": dict,
           "programs": list, "files": dict, "manifest_sha256": str}
_PROGRAM_FIELDS = {"name": str, "kind": str, "start": int, "n_tokens": int,
                   "prefill_chunks": list, "dram_offset": int, "instructions": int,
                   "l2_plan": dict}


def _fields(obj: dict, fields: dict, where: str) -> None:
    for key, kind in fields.items():
        if key not in obj:
            raise BuildError(f"{where}: field {key!r} is missing; {RECOMPILE}")
        value = obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BuildError(f"{where}: field {key!r} must be {kind.__name__}")


def read_manifest(folder: Path) -> dict:
    """The manifest of ``folder``, its fields, its own hash and every file's checked."""
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a build folder (no {MANIFEST}); "
                                "run `accel compile` first")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BuildError(f"{path}: not valid JSON ({str(e)[:80]})") from None
    if not isinstance(m, dict):
        raise BuildError(f"{path}: not a JSON object")
    _fields(m, _FIELDS, str(path))
    if _content_hash(m) != m["manifest_sha256"]:
        raise BuildError(f"{path}: edited after it was written (its content hash does not "
                         f"match); {RECOMPILE}")
    tokenizer = folder / "tokenizer.json"            # read by `accel run` when present
    if tokenizer.exists() and tokenizer.name not in m["files"]:
        raise BuildError(f"{tokenizer}: not part of the build ({path} does not list it); "
                         f"{RECOMPILE}")
    for name, digest in m["files"].items():
        file = folder / name
        if Path(name).name != name:
            raise BuildError(f"{path}: file {name!r} is not a name inside the build folder")
        if not file.is_file():
            raise BuildError(f"{file}: missing; {RECOMPILE}")
        if _sha256(file) != digest:
            raise BuildError(f"{file}: changed since it was compiled (SHA-256 does not match "
                             f"{path}); {RECOMPILE}")
    return m


def check_manifest(m: dict, path: Path) -> None:
    """The manifest's programs, prompt and memory map agree with each other."""
    for i, p in enumerate(m["programs"]):
        if not isinstance(p, dict):
            raise BuildError(f"{path}: programs[{i}] is not an object")
        _fields(p, _PROGRAM_FIELDS, f"{path}: programs[{i}]")
    n_prompt, new = len(m["prompt"]), m["max_new_tokens"]
    if m["with_weights"]:
        if n_prompt < 1 or new < 1:
            raise BuildError(f"{path}: a generation needs a prompt and at least one new token")
        expected = [("prefill", "prefill", 0, n_prompt)] + [
            (f"decode_{i:03d}", "decode", n_prompt + i, 1) for i in range(new - 1)]
        got = [(p["name"], p["kind"], p["start"], p["n_tokens"]) for p in m["programs"]]
        if got != expected:
            raise BuildError(f"{path}: the programs {[g[0] for g in got]} are not a prefill "
                             f"of {n_prompt} tokens then {new - 1} decode steps "
                             f"(prompt and max_new_tokens)")
    elif len(m["programs"]) != 1:
        raise BuildError(f"{path}: a build without weights holds one program")
    mm = m["memory_map"]
    _fields(mm, {"size": int, "regions": dict}, f"{path}: memory_map")
    regions = []
    for name, r in mm["regions"].items():
        if not (isinstance(r, dict) and isinstance(r.get("offset"), int)
                and isinstance(r.get("size"), int)) or r["offset"] < 0 or r["size"] < 0:
            raise BuildError(f"{path}: memory_map region {name!r} has no valid offset and size")
        if r["offset"] + r["size"] > mm["size"]:
            raise BuildError(f"{path}: memory_map region {name!r} ends beyond the image "
                             f"({mm['size']} bytes)")
        regions.append((r["offset"], r["offset"] + r["size"], name))
    regions.sort()
    for (_, end, a), (start, _, b) in zip(regions, regions[1:], strict=False):
        if start < end:
            raise BuildError(f"{path}: memory_map regions {a!r} and {b!r} overlap")
    if mm.get("rw_base") is not None and (not isinstance(mm["rw_base"], int)
                                          or not 0 <= mm["rw_base"] <= mm["size"]):
        raise BuildError(f"{path}: memory_map field 'rw_base' is not an offset in the image")
    for name in ("tokens", "block_table", "logits"):
        if name not in mm["regions"]:
            raise BuildError(f"{path}: memory_map has no region {name!r}")
    for p in m["programs"]:
        r = mm["regions"].get(f"program:{p['name']}")
        if r is None or r["offset"] != p["dram_offset"] or \
                r["size"] != p["instructions"] * INSTR_BYTES:
            raise BuildError(f"{path}: program {p['name']!r} does not match its memory_map "
                             f"region (offset {p['dram_offset']}, {p['instructions']} "
                             f"instructions)")
        if f"{p['name']}.bin" not in m["files"]:
            raise BuildError(f"{path}: program {p['name']!r} has no file in 'files'")
    if m["with_weights"] and "dram.bin" not in m["files"]:
        raise BuildError(f"{path}: a build with weights lists no dram.bin in 'files'")


def load_build(folder: str | Path):
    """Read and check a build folder written by ``save_build``: a ``Build`` whose DRAM
    image holds each program file at its region. Raises ``BuildError`` (see the
    contract) or ``FileNotFoundError`` for a folder without a manifest."""
    from arch.hardware import hardware_from_dict
    from compiler.driver import Build, Program
    from compiler.image import DramImage, MemoryMap, Region, block_table
    from models.config import ModelConfig

    folder = Path(folder)
    path = folder / MANIFEST
    m = read_manifest(folder)
    check_manifest(m, path)
    cfg = ModelConfig.from_hf_dict(m["model"], name=m["model_name"])
    hw = hardware_from_dict(m["hardware"], str(path))
    mmap = MemoryMap(size=m["memory_map"]["size"], rw_base=m["memory_map"].get("rw_base"))
    for name, r in m["memory_map"]["regions"].items():
        mmap.regions[name] = Region(name, r["offset"], r["size"])
    image = DramImage(mmap, with_data=False)
    programs = []
    for p in m["programs"]:
        file = folder / f"{p['name']}.bin"
        try:
            instrs = read_program(file)
        except ProgramFileError as e:
            raise BuildError(str(e)) from None
        if len(instrs) != p["instructions"]:
            raise BuildError(f"{file}: {len(instrs)} instructions, {path} says "
                             f"{p['instructions']}")
        programs.append(Program(p["name"], p["kind"], p["start"], p["n_tokens"], instrs,
                                p["l2_plan"], p["prefill_chunks"]))
    if m["with_weights"]:
        dram = folder / "dram.bin"
        image.data = np.fromfile(dram, dtype=np.uint8)
        if image.data.size != mmap.size:
            raise BuildError(f"{dram}: {image.data.size} bytes, {path} says {mmap.size}")
        tok = mmap["tokens"]
        held = image.data[tok.offset:tok.offset + 4 * len(m["prompt"])].view("<i4")
        if held.tolist() != m["prompt"]:
            raise BuildError(f"{dram}: the token buffer does not hold the prompt of {path}")
        for p in programs:
            image.write(f"program:{p.name}", np.frombuffer(encode_program(p.instrs), np.uint8))
    else:
        image.write("block_table", block_table(mmap["block_table"].size // 4), keep=True)
    return Build(cfg, hw, m["prefetch"], mmap, image, programs, m["prompt"],
                 m["max_new_tokens"])


def read_only_regions(build) -> list:
    """The memory map's regions no program writes: the constants (below ``rw_base``),
    the block table and the programs."""
    rw_base = build.mmap.rw_base if build.mmap.rw_base is not None else 0
    return [r for name, r in build.mmap.regions.items()
            if r.end <= rw_base or name == "block_table" or name.startswith("program:")]
