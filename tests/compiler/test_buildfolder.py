"""Build folders that vouch for themselves (compiler/buildfolder.py): every edited,
corrupted, missing or inconsistent file is refused by name; a run that changes read-only
DRAM is refused on the ISA simulator (the RTL path runs the same check,
tests/rtl/test_tiny_rtl.py)."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from accel.runtime import run_build
from arch.hardware import load_hardware
from compiler.asm import encode_program, write_program
from compiler.buildfolder import (
    BuildError,
    RunIntegrityError,
    _content_hash,
    load_build,
    read_only_regions,
)
from compiler.driver import compile_generation

PROMPT = [5, 9, 13, 2, 7]


@pytest.fixture(scope="module")
def saved(tiny_int, tmp_path_factory):
    """A tiny build of three new tokens on edge-4x4, saved once."""
    build = compile_generation(tiny_int.cfg, tiny_int.qm, load_hardware("edge-4x4"), PROMPT, 3)
    return build, build.save(tmp_path_factory.mktemp("saved") / "tiny")


@pytest.fixture
def folder(saved, tmp_path):
    return shutil.copytree(saved[1], tmp_path / "tiny")


def flip(path, offset, mask=0x01):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= mask
    path.write_bytes(bytes(data))


def edit_manifest(folder, change, rehash=False):
    """Apply ``change`` to the manifest; with ``rehash``, fix its own hash as a careful
    editor would, so that only the consistency checks can see the edit."""
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    change(m)
    if rehash:
        m["manifest_sha256"] = _content_hash(m)
    path.write_text(json.dumps(m))


def test_a_saved_build_loads_with_each_program_from_its_file(saved):
    build, folder = saved
    loaded = load_build(folder)
    assert np.array_equal(loaded.image.data, build.image.data)
    raw = np.fromfile(folder / "dram.bin", np.uint8)
    for p in build.programs:                       # the one copy is the program file
        r = build.mmap[f"program:{p.name}"]
        assert not raw[r.offset:r.end].any()
        assert [i.operands for i in loaded.programs[build.programs.index(p)].instrs] == \
            [i.operands for i in p.instrs]
    assert set(json.loads((folder / "manifest.json").read_text())["files"]) == {
        f.name for f in folder.iterdir() if f.name != "manifest.json"}


def test_every_flipped_bit_of_a_program_or_the_image_is_refused(folder):
    """A few dozen random bit flips in the program files and the DRAM image (the
    benchmark ``benchmarks/fuzz_builds.py`` runs thousands): none loads."""
    rng = np.random.default_rng(0)
    files = sorted(folder.glob("*.bin"))
    assert len(files) == 4                         # dram.bin, prefill, decode_000, decode_001
    for _ in range(36):
        path = files[rng.integers(len(files))]
        original = path.read_bytes()
        flip(path, int(rng.integers(len(original))), 1 << int(rng.integers(8)))
        with pytest.raises(BuildError, match=rf"{path.name}: changed since it was compiled"):
            load_build(folder)
        path.write_bytes(original)
    load_build(folder)


def test_a_program_edited_with_its_crc_fixed_is_refused(folder):
    build = load_build(folder)
    instrs = build.programs[1].instrs
    i = next(i for i, x in enumerate(instrs) if x.mnemonic == "DMA_LOAD")
    instrs[i] = instrs[i].replace(dram_addr=instrs[i].dram_addr + 64)
    write_program(folder / "decode_000.bin", instrs)      # a valid program file
    with pytest.raises(BuildError, match="decode_000.bin: changed since it was compiled"):
        load_build(folder)


@pytest.mark.parametrize(("change", "rehash", "message"), [
    (lambda m: m.update(max_new_tokens=8), False, "edited after it was written"),
    (lambda m: m.update(max_new_tokens=8), True, "not a prefill of 5 tokens then 7 decode"),
    (lambda m: m.update(prompt=m["prompt"][:3]), True, "not a prefill of 3 tokens"),
    (lambda m: m["programs"].reverse(), True, "are not a prefill"),
    (lambda m: m["programs"].pop(), True, "are not a prefill"),
    (lambda m: m.pop("prompt"), False, "field 'prompt' is missing"),
    (lambda m: m["programs"][0].pop("dram_offset"), True, r"programs\[0\]: field 'dram_offset'"),
    (lambda m: m["programs"][1].update(dram_offset=0), True, "'decode_000' does not match"),
    (lambda m: m["memory_map"]["regions"]["tokens"].update(offset=0), True, "overlap"),
    (lambda m: m["memory_map"].update(size=4096), True, "ends beyond the image"),
    (lambda m: m["files"].pop("dram.bin"), True, "lists no dram.bin"),
    (lambda m: m.update(max_new_tokens="3"), True, "'max_new_tokens' must be int"),
])
def test_an_edited_manifest_is_refused(folder, change, rehash, message):
    edit_manifest(folder, change, rehash)
    with pytest.raises(BuildError, match=message) as e:
        load_build(folder)
    assert "manifest.json" in str(e.value)


def test_a_shortened_prompt_in_the_image_is_refused(folder):
    """The prompt and the program list agree but the image's token buffer does not."""
    build = load_build(folder)
    tok = build.mmap["tokens"]
    data = build.image.data.copy()
    data[tok.offset] ^= 1
    for p in build.programs:
        data[build.mmap[f"program:{p.name}"].offset:build.mmap[f"program:{p.name}"].end] = 0
    (folder / "dram.bin").write_bytes(data.tobytes())
    edit_manifest(folder, lambda m: m["files"].update(
        {"dram.bin": hashlib.sha256(data.tobytes()).hexdigest()}), rehash=True)
    with pytest.raises(BuildError, match="dram.bin: the token buffer does not hold the prompt"):
        load_build(folder)


@pytest.mark.parametrize("damage", ["missing_file", "invalid_json", "not_object"])
def test_a_broken_folder_is_refused_by_name(folder, damage):
    if damage == "missing_file":
        (folder / "decode_001.bin").unlink()
        message = "decode_001.bin: missing"
    else:
        (folder / "manifest.json").write_text("{oops" if damage == "invalid_json" else "[1]")
        message = "manifest.json: not " + ("valid JSON" if damage == "invalid_json"
                                           else "a JSON object")
    with pytest.raises(BuildError, match=message):
        load_build(folder)


@pytest.mark.parametrize("where", ["weights", "beyond the image"])
def test_a_run_that_writes_read_only_dram_is_refused(saved, where):
    """A counter block retargeted into the weights, or past the image into the simulated
    DRAM's zeros (which both simulators have, up to the RTL's capacity): the ISA
    simulator runs it, the runtime's checks of the DRAM after the run refuse the result."""
    build, _ = saved
    target = next(r for r in read_only_regions(build) if r.name.startswith("param:"))
    address = target.offset if where == "weights" else build.image.data.size + 64
    message = f"region {target.name}" if where == "weights" else "beyond the image"
    program = build.programs[-1]
    store = next(i for i, x in enumerate(program.instrs) if x.mnemonic == "STORE_COUNTERS")
    instr = program.instrs[store]
    program.instrs[store] = instr.replace(dram_addr=address - address % 8)
    region = build.mmap[f"program:{program.name}"]
    original = build.image.data[region.offset:region.end].copy()
    build.image.data[region.offset:region.end] = np.frombuffer(encode_program(program.instrs),
                                                               np.uint8)
    try:
        with pytest.raises(RunIntegrityError, match=message):
            run_build(build, "isa", check_races=False)
    finally:
        program.instrs[store] = instr
        build.image.data[region.offset:region.end] = original


def test_a_build_written_over_a_build_leaves_none_of_the_old_files(saved, folder, tiny_int):
    """Recompiling into a build folder removes the previous build's files (a shorter
    generation leaves no stale decode programs, a build without weights no stale DRAM
    image or tokenizer); a folder holding anything else, or a file, is refused."""
    (folder / "tokenizer.json").write_text("{}")
    edit_manifest(folder, lambda m: m["files"].update({"tokenizer.json": "0"}))
    build = compile_generation(tiny_int.cfg, tiny_int.qm, load_hardware("edge-4x4"), PROMPT, 1)
    build.save(folder)
    written = json.loads((folder / "manifest.json").read_text())["files"]
    assert {f.name for f in folder.iterdir()} == set(written) | {"manifest.json"}
    assert "decode_000.bin" not in written and "tokenizer.json" not in written
    load_build(folder)
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="not empty and not a build folder.*notes.txt"):
        build.save(folder)
    with pytest.raises(BuildError, match="is a file"):
        build.save(folder / "notes.txt")
