"""The house's layout, kept true: the layers' import order, a test for every module, and
every path and module the README, docs/ and docstrings name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each package and its layer: a module imports only from its own layer or below.
LAYERS = {"arch": 0, "models": 1, "compiler": 2, "rtl": 3, "sweeps": 4, "accel": 5,
          "benchmarks": 6}
PACKAGES = [p for p in LAYERS if p != "benchmarks"]


def _modules(packages=PACKAGES) -> list[Path]:
    return sorted(m for p in packages for m in (ROOT / p).glob("*.py")
                  if m.name != "__init__.py")


def _imports(path: Path) -> set[str]:
    """Top-level packages a module imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("path", _modules(list(LAYERS)), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_import_runs_up_a_layer(path):
    layer = LAYERS[path.parent.name]
    upward = sorted(p for p in _imports(path) if LAYERS.get(p, -1) > layer)
    assert not upward, f"{path.relative_to(ROOT)} imports {upward}, a layer above it"


def test_every_module_has_its_test_or_names_the_tests_that_cover_it():
    """``tests/<package>/test_<module>.py``, or a ``Tested by`` sentence in the module's
    docstring naming the test files that cover it (which must exist)."""
    missing = []
    for path in _modules():
        pkg, name = path.parent.name, path.stem
        if (ROOT / "tests" / pkg / f"test_{name}.py").exists():
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        match = re.search(r"Tested by (.*?)(?:\.\s|\.$)", doc, re.S)
        named = re.findall(r"tests/[\w/]+\.py", match.group(1)) if match else []
        if not named or not all((ROOT / test).exists() for test in named):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"modules without a test file or a 'Tested by' line: {missing}"


# Paths and modules the prose may name: a file under the project's folders, or a module.
_PATH = re.compile(r"(?<![\w./-])((?:arch|models|compiler|rtl|sweeps|accel|tests|benchmarks|"
                   r"configs|docs|\.ci)/[\w./-]*\w)")
_MODULE = re.compile(r"(?<![\w./-])((?:arch|models|compiler|rtl|sweeps|accel|benchmarks)"
                     r"(?:\.[a-z_]\w*)+)(?![\w/-])")
_FILE_SUFFIX = re.compile(r"\.(md|py|toml|json|txt|html|bin|v|sv)$")


def _prose() -> list[tuple[str, str]]:
    """(where, text) for the README, every doc, and every docstring and comment."""
    out = [("README.md", (ROOT / "README.md").read_text())]
    out += [(str(d.relative_to(ROOT)), d.read_text()) for d in sorted((ROOT / "docs").glob("*.md"))]
    for path in _modules(list(LAYERS)) + sorted((ROOT / "tests").rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        docs = [ast.get_docstring(n) or "" for n in ast.walk(tree)
                if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)]
        comments = [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]
        out.append((str(path.relative_to(ROOT)), "\n".join(docs + comments)))
    return out


def _module_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for n in range(len(parts), 1, -1):          # the longest prefix that is a module
        base = ROOT.joinpath(*parts[:n])
        if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
            return True
    return False


def test_every_path_and_module_the_docs_name_exists():
    wrong = []
    for where, text in _prose():
        for path in _PATH.findall(text):
            path = path.rstrip(".")
            if "*" in path or "<" in path:
                continue
            if not (ROOT / path).exists():
                wrong.append(f"{where}: {path}")
        for dotted in _MODULE.findall(text):
            if not _FILE_SUFFIX.search(dotted) and not _module_exists(dotted):
                wrong.append(f"{where}: {dotted}")
    assert not wrong, "named but missing:\n" + "\n".join(sorted(set(wrong)))


MAX_FUNCTION_LINES = 150


def test_no_function_is_longer_than_150_lines():
    """Every function and method of the packages and benchmarks reads in one sitting; the
    longest are printed (``pytest -s``) so the margin stays visible."""
    lengths = []
    for path in _modules(list(LAYERS)):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths.append((node.end_lineno - node.lineno + 1,
                                f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    lengths.sort(reverse=True)
    print("longest functions:", lengths[:5])
    assert lengths[0][0] <= MAX_FUNCTION_LINES, lengths[:5]
