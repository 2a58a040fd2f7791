#!/usr/bin/env python3
"""Every assertion of the end-to-end tests says what it checks: an
`assert` has a message with some words in it, an `eq(a, b, what)` its
`what`. Run by CTest (e2e.asserts) over tests/e2e/*.py; prints
FILE:LINE: problem for each one that does not, and exits 1."""
import ast
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# Files, or (file, function) pairs, not checked (none: keep it that way).
PENDING = set()
PENDING_FUNCS = set()


def has_words(node):
    """Whether node (a message expression) holds a non-empty string literal."""
    return node is not None and any(
        isinstance(x, ast.Constant) and isinstance(x.value, str) and x.value.strip()
        for x in ast.walk(node))


def problems(path):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    skip = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef) and \
                (os.path.basename(path), n.name) in PENDING_FUNCS:
            skip.update(id(x) for x in ast.walk(n))
    for n in ast.walk(tree):
        if id(n) in skip:
            continue
        if isinstance(n, ast.Assert) and not has_words(n.msg):
            yield n.lineno, "assert without a message saying what it checks"
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "eq":
            what = n.args[2] if len(n.args) > 2 else next(
                (k.value for k in n.keywords if k.arg == "what"), None)
            if not has_words(what):
                yield n.lineno, "eq() without its what"


def main():
    paths = sys.argv[1:] or sorted(
        p for p in glob.glob(os.path.join(HERE, "*.py"))
        if os.path.basename(p) not in PENDING)
    bad = 0
    for p in paths:
        for line, what in problems(p):
            print("%s:%d: %s" % (p, line, what))
            bad += 1
    if bad:
        print("%d assertion(s) without a message" % bad)
        sys.exit(1)
    print("%d files, every assertion with its message" % len(paths))


if __name__ == "__main__":
    main()
