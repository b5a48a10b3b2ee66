"""The device side (JetPack 5 runs Python 3.8) checked statically for Python 3.8, without a 3.8 interpreter.

vermin checks the syntax and standard-library names each module uses (`--target=3.8-`), with
`--eval-annotations` on the CLI modules, whose annotations typer evaluates at run time. Two things
vermin does not see are checked on the syntax tree:
- a module with annotations has `from __future__ import annotations`, so that on 3.8 they stay strings
  (`list[int]` or `X | None` in an annotation is then never evaluated);
- builtin generics (`list[int]`, `collections.abc.Callable[...]`) and `X | None` unions in code that 3.8
  evaluates: outside annotations everywhere, and in the annotations of the CLI modules.

Usage: python .ci/py38_check.py [PATH ...] [--evaluated PATH ...]   (no PATH: the device side)
"""
from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What a device runs: the runtime, the TensorRT modules and what the device commands import.
DEVICE = ["runtime", "calibration", "converters/__init__.py", "converters/qdq_placement.py", "converters/tensorrt.py",
          "converters/trt_conformance.py", "edgeseg/__init__.py", "edgeseg/bench.py", "edgeseg/choices.py",
          "edgeseg/console.py", "edgeseg/data/__init__.py", "edgeseg/data/groups.py", "edgeseg/data/readers.py",
          "edgeseg/data/synth.py", "edgeseg/evaluate.py", "edgeseg/metrics.py", "edgeseg/rundir.py",
          "edgeseg/summary.py"]
#: Modules whose annotations are evaluated at run time (typer reads the CLI functions' signatures).
EVALUATED = ["edgeseg/cli"]
GENERIC_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "type"}
VERMIN = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())",
          "--target=3.8-", "--no-tips", "--violations", "-q"]


def python_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for path in map(Path, paths):
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation."""
    roots: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(sub) for root in roots for sub in ast.walk(root)}


def _abc_names(tree: ast.AST) -> set[str]:
    """Names bound by `from collections.abc import ...` (and `from collections import ...`)."""
    return {alias.asname or alias.name for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module in ("collections.abc", "collections")
            for alias in node.names}


def _is_generic(node: ast.expr, abc_names: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in GENERIC_BUILTINS or node.id in abc_names
    return isinstance(node, ast.Attribute) and ast.unparse(node).startswith("collections.")


def tree_problems(path: Path, evaluated: bool) -> list[str]:
    """What 3.8 rejects in `path` that vermin does not report, as 'path:line: problem' lines."""
    tree = ast.parse(path.read_text(), str(path))
    annotations = _annotation_nodes(tree)
    future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and
                 any(a.name == "annotations" for a in n.names) for n in tree.body)
    problems = []
    if annotations and not future:
        problems.append(f"{path}:1: annotations without `from __future__ import annotations` are evaluated on 3.8")
    abc_names = _abc_names(tree)
    for node in ast.walk(tree):
        if id(node) in annotations and future and not evaluated:
            continue
        if isinstance(node, ast.Subscript) and _is_generic(node.value, abc_names):
            problems.append(f"{path}:{node.lineno}: {ast.unparse(node)}: subscripted builtin or "
                            "collections type needs 3.9 where evaluated (use typing.List, Dict, ...)")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and (
                id(node) in annotations or any(isinstance(side, ast.Constant) and side.value is None
                                               for side in (node.left, node.right))):
            problems.append(f"{path}:{node.lineno}: {ast.unparse(node)}: `X | Y` union needs 3.10 where "
                            "evaluated (use typing.Optional / Union)")
    return problems


def check(paths: list[str], evaluated: list[str]) -> int:
    """Run vermin and the tree checks; print every problem; 0 when there is none."""
    plain, typed = python_files(paths), python_files(evaluated)
    status = 0
    for files, flags in ((plain, []), (typed, ["--eval-annotations"])):
        if files:
            status |= subprocess.run(VERMIN + flags + [str(f) for f in files]).returncode
    problems = [p for f in plain for p in tree_problems(f, False)] + [p for f in typed for p in tree_problems(f, True)]
    if problems or status:
        print("\n".join(problems + ["Python 3.8: the problems above need fixing"]))
        return 1
    print(f"Python 3.8: {len(plain) + len(typed)} files OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--evaluated", nargs="*", default=[])
    args = parser.parse_args(argv)
    if not args.paths and not args.evaluated:
        args.paths, args.evaluated = [str(ROOT / p) for p in DEVICE], [str(ROOT / p) for p in EVALUATED]
    return check(args.paths, args.evaluated)


if __name__ == "__main__":
    sys.exit(main())
