"""The package layering, checked statically on every import of the tree (``ast``, no module is run).

Bottom to top: {retention, conf} → datamodules → lightning_modules → commands → notebooks (the
analysis notebooks' jupytext sources and their demo store, which may use every package below); a
module imports only from its own layer or below. retention/ imports neither Lightning nor OmegaConf; conf/ imports no
torch, transformers or Lightning (config errors answer before torch loads) and, of retention/, only
the torch-free ``retention.methods``. No module imports an underscore-private name, of another of our
modules or of a library. An import inside a function is allowed only where a docstring says why: ``commands.cli``
imports a command's module when that command runs, ``commands.train`` imports the runner once the
config composes.

Every import is collected — top level and inside functions, ``import a.b``, ``from a import b``,
relative imports resolved against the importing module, and ``importlib.import_module(...)`` /
``__import__(...)`` calls (the constant prefix of their argument).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"retention": 0, "conf": 0, "datamodules": 1, "lightning_modules": 2, "commands": 3, "notebooks": 4}
PACKAGES = tuple(LAYERS)
FORBIDDEN = {  # package -> top-level modules it must not import
    "retention": ("lightning", "pytorch_lightning", "omegaconf"),
    "conf": ("torch", "transformers", "lightning", "pytorch_lightning"),
}
CONF_MAY_IMPORT_FROM_RETENTION = ("retention.methods",)
# (file, enclosing function, imported module): the function-level imports the layering allows.
ALLOWED_DEFERRED = {
    ("commands/cli.py", "main", "commands."),  # importlib.import_module(f"commands.{args.command}")
    ("commands/train.py", "run", "commands.runner"),
}
# Exceptions, keyed (file, enclosing function, imported module) so moving lines does not break them.
# Both are empty: the tree has no exception. A new entry needs a reason beside it; the tests fail on
# anything not listed and on a listed entry that no longer occurs.
KNOWN_LAYERING: set[tuple[str, str, str]] = set()  # conf/ → retention/ beyond retention.methods
KNOWN_DEFERRED: set[tuple[str, str, str]] = set()  # function-level imports outside ALLOWED_DEFERRED


@dataclass(frozen=True)
class Import:
    """One import: ``module`` is absolute (relative imports resolved); ``names`` what a ``from``
    import takes from it (empty for ``import module``); ``function`` the enclosing function's
    qualified name, or "" at module level."""

    file: str
    line: int
    module: str
    names: tuple[str, ...]
    function: str
    dynamic: bool = False

    @property
    def package(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        what = f"from {self.module} import {', '.join(self.names)}" if self.names else f"import {self.module}"
        where = f" (in {self.function})" if self.function else ""
        return f"{self.file}:{self.line}: {what}{where}"


def module_name(path: str) -> str:
    """"retention/encoder.py" → "retention.encoder"; a package's __init__.py → the package."""
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _dynamic_target(call: ast.Call) -> str | None:
    """The constant prefix of ``importlib.import_module(x)`` / ``__import__(x)``'s argument, or None."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr):
        return "".join(v.value for v in arg.values[:1] if isinstance(v, ast.Constant))
    return "?"


def imports_in_source(source: str, path: str) -> list[Import]:
    """Every import in ``source``, the text of the file at repository-relative ``path``."""
    importer = module_name(path)
    is_package = Path(path).name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, qualname: str, in_function: bool) -> None:
        function = qualname if in_function else ""
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                name = getattr(child, "name", "<lambda>")
                # a class body runs at import time; a function body when called
                visit(child, f"{qualname}.{name}" if qualname else name, in_function or not isinstance(child, ast.ClassDef))
                continue
            if isinstance(child, ast.Import):
                found.extend(Import(path, child.lineno, a.name, (), function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                module = _resolve(child.module, child.level, importer, is_package)
                found.append(Import(path, child.lineno, module, tuple(a.name for a in child.names), function))
            elif isinstance(child, ast.Call) and (target := _dynamic_target(child)) is not None:
                found.append(Import(path, child.lineno, target, (), function, dynamic=True))
            visit(child, qualname, in_function)

    visit(ast.parse(source, filename=path), "", False)
    return found


def tree_imports(root: Path = ROOT) -> list[Import]:
    out = []
    for package in PACKAGES:
        for file in sorted((root / package).rglob("*.py")):
            rel = file.relative_to(root).as_posix()
            out.extend(imports_in_source(file.read_text(), rel))
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def violations(imports: list[Import]) -> list[tuple[Import, str]]:
    """Layering errors: (the import, a line naming file, line, the offending import and the rule)."""
    errors = []
    for imp in imports:
        src = imp.file.split("/")[0]
        dst = imp.package
        if dst in LAYERS and LAYERS[dst] > LAYERS[src]:
            errors.append((imp, f"{imp}: {src} (layer {LAYERS[src]}) imports from higher layer {dst} (layer {LAYERS[dst]})"))
        if dst in FORBIDDEN.get(src, ()):
            errors.append((imp, f"{imp}: {src}/ must not import {dst}"))
        if src == "conf" and dst == "retention" and not any(
                imp.module == m or imp.module.startswith(m + ".") for m in CONF_MAY_IMPORT_FROM_RETENTION):
            errors.append((imp, f"{imp}: conf/ may import only {', '.join(CONF_MAY_IMPORT_FROM_RETENTION)} from retention/"))
        private = [n for n in (*imp.names, *imp.module.split(".")) if _private(n)]
        if private:
            errors.append((imp, f"{imp}: imports underscore-private {', '.join(private)}"))
    return errors


def deferred_key(imp: Import) -> tuple[str, str, str]:
    """(file, function, module) of a function-level import; a dynamic import keys on its constant prefix."""
    return imp.file, imp.function, imp.module


def deferred(imports: list[Import]) -> list[Import]:
    """Function-level imports not in ALLOWED_DEFERRED."""
    return [i for i in imports if i.function and deferred_key(i) not in ALLOWED_DEFERRED]


def package_edges(imports: list[Import]) -> dict[tuple[str, str], bool]:
    """(importer package, imported package) among ours → True when at least one import is at module level."""
    edges: dict[tuple[str, str], bool] = {}
    for imp in imports:
        src, dst = imp.file.split("/")[0], imp.package
        if dst in LAYERS and dst != src:
            edges[src, dst] = edges.get((src, dst), False) or not imp.function
    return edges


# ---------------------------------------------------------------------------------------------- the tree
@pytest.fixture(scope="module")
def imports():
    found = tree_imports()
    assert {i.file.split("/")[0] for i in found} == set(PACKAGES)  # the walk reached every package
    return found


def _unexpected_and_stale(found: dict[tuple[str, str, str], list[str]], known: set) -> tuple[str, str]:
    unexpected = [m for k, ms in sorted(found.items()) if k not in known for m in ms]
    stale = sorted(known - set(found))
    return "\n".join(unexpected), "\n".join(map(str, stale))


def test_no_import_breaks_the_layering(imports):
    found: dict[tuple[str, str, str], list[str]] = {}
    for imp, message in violations(imports):
        found.setdefault(deferred_key(imp), []).append(message)
    unexpected, stale = _unexpected_and_stale(found, KNOWN_LAYERING)
    assert not unexpected, f"layering violations:\n{unexpected}"
    assert not stale, f"no longer found, delete from KNOWN_LAYERING:\n{stale}"


def test_function_level_imports_only_where_allowed(imports):
    found: dict[tuple[str, str, str], list[str]] = {}
    for imp in deferred(imports):
        found.setdefault(deferred_key(imp), []).append(str(imp))
    unexpected, stale = _unexpected_and_stale(found, KNOWN_DEFERRED)
    assert not unexpected, f"function-level imports outside the two allowed places:\n{unexpected}"
    assert not stale, f"no longer found, delete from KNOWN_DEFERRED:\n{stale}"


def test_allowed_deferred_imports_still_exist(imports):
    """The allow-list names real places (a renamed function would otherwise widen nothing silently)."""
    assert {deferred_key(i) for i in imports if i.function} >= ALLOWED_DEFERRED


def test_conf_composes_without_loading_torch():
    """The runtime side of the conf/ rules: importing conf and composing the default config loads
    none of torch, transformers, Lightning (a fresh interpreter, so nothing is loaded already)."""
    code = ("import sys; from conf.compose import compose; compose([]); "
            "print(sorted(m for m in ('torch', 'transformers', 'lightning') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- the checker
def test_checker_reports_upward_private_and_forbidden_imports():
    source = (
        "import torch\n"
        "from omegaconf import OmegaConf\n"
        "from ..lightning_modules.system import RetentionSystem\n"
        "from .selection import _private_helper\n"
        "def f():\n"
        "    import commands.cli\n"
    )
    found = imports_in_source(source, "retention/encoder.py")
    assert [(i.line, i.module, i.function) for i in found] == [
        (1, "torch", ""), (2, "omegaconf", ""), (3, "lightning_modules.system", ""),
        (4, "retention.selection", ""), (6, "commands.cli", "f")]
    errors = [message for _, message in violations(found)]
    assert errors == [
        "retention/encoder.py:2: from omegaconf import OmegaConf: retention/ must not import omegaconf",
        "retention/encoder.py:3: from lightning_modules.system import RetentionSystem: "
        "retention (layer 0) imports from higher layer lightning_modules (layer 2)",
        "retention/encoder.py:4: from retention.selection import _private_helper: imports underscore-private _private_helper",
        "retention/encoder.py:6: import commands.cli (in f): retention (layer 0) imports from higher layer commands (layer 3)",
    ]
    assert [str(i) for i in deferred(found)] == ["retention/encoder.py:6: import commands.cli (in f)"]


def test_checker_resolves_relative_and_dynamic_imports_and_conf_rules():
    source = (
        "import importlib\n"
        "from . import loaders\n"
        "from retention.methods import METHODS\n"
        "from retention.encoder import RetentionEncoder\n"
        "import transformers.models\n"
        "class C:\n"
        "    def m(self, name):\n"
        "        return importlib.import_module(f'datamodules.{name}')\n"
    )
    found = imports_in_source(source, "conf/__init__.py")
    assert [(i.module, i.names, i.function, i.dynamic) for i in found] == [
        ("importlib", (), "", False), ("conf", ("loaders",), "", False), ("retention.methods", ("METHODS",), "", False),
        ("retention.encoder", ("RetentionEncoder",), "", False), ("transformers.models", (), "", False),
        ("datamodules.", (), "C.m", True)]
    assert [message for _, message in violations(found)] == [
        "conf/__init__.py:4: from retention.encoder import RetentionEncoder: "
        "conf/ may import only retention.methods from retention/",
        "conf/__init__.py:5: import transformers.models: conf/ must not import transformers",
        "conf/__init__.py:8: import datamodules. (in C.m): conf (layer 0) imports from higher layer datamodules (layer 1)",
    ]
    # a module two levels down: `..` is its grandparent package
    (imp,) = imports_in_source("from ..system import X\n", "lightning_modules/sub/mod.py")
    assert imp.module == "lightning_modules.system"
    # notebooks are the top layer: they may import commands, nothing below imports them
    assert not violations(imports_in_source("from commands.compare import fetch_runs\n", "notebooks/ablations.py"))
    assert [m for _, m in violations(imports_in_source("from notebooks.demo_store import build\n", "commands/x.py"))] == [
        "commands/x.py:1: from notebooks.demo_store import build: commands (layer 3) imports from higher layer notebooks (layer 4)"]
    # a library's private API is reported as well
    assert [m for _, m in violations(imports_in_source("from torch._dynamo import config\n", "commands/x.py"))] == [
        "commands/x.py:1: from torch._dynamo import config: imports underscore-private _dynamo"]
