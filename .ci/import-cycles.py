#!/usr/bin/env python3
"""Finds import circles between the crate's source files.

Every `use crate::…`, `use super::…` and inline `crate::…` path in a file under src/ is an
edge from that file to the file that owns the module it names (a path through a parent's
`pub use` follows the re-export to the file that defines the item). An edge between a
module and its own parent is not counted: a parent declares its children and they see its
private items by design. Any remaining strongly connected set of two or more files is a
circle; the script prints each one and exits 1.

    python3 .ci/import-cycles.py [SRC_DIR]      (default: src)
"""
import os
import re
import sys

SRC = sys.argv[1] if len(sys.argv) > 1 else "src"


def module_of(path):
    """src/a/b.rs -> ('a','b'); src/a/mod.rs -> ('a',); src/lib.rs -> ()."""
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return tuple(rel)


files = {}
for root, _, names in os.walk(SRC):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(root, n)
            files[module_of(p)] = p


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"//.*", "", line) for line in text.splitlines())


def expand(prefix, tree):
    """Expands a use tree such as `a::{b, c::{d, e}}` into full paths."""
    tree = tree.strip()
    if not tree:
        return []
    m = re.match(r"^([\w:]*?)(?:::)?\{(.*)\}$", tree, re.S)
    if m:
        head = [s for s in m.group(1).split("::") if s]
        parts, depth, cur = [], 0, ""
        for ch in m.group(2):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        parts.append(cur)
        out = []
        for p in parts:
            out += expand(prefix + head, p)
        return out
    path = re.split(r"\s+as\s+", tree)[0]
    return [prefix + [s for s in path.split("::") if s]]


def strip_tests(text):
    """Drops `#[cfg(test)] mod … { … }` blocks: unit tests may reach across the crate."""
    out, pos = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < pos:
            continue
        out.append(text[pos:m.start()])
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        pos = i
    out.append(text[pos:])
    return "".join(out)


texts = {
    m: strip_tests(strip_comments(open(p, encoding="utf-8").read())) for m, p in files.items()
}

# Names a module file re-exports with `pub use` (or `pub(crate) use`): name -> full path.
reexports = {}
for mod, text in texts.items():
    for stmt in re.findall(r"\bpub(?:\([\w:]+\))?\s+use\s+([^;]+);", text):
        for path in expand([], stmt):
            if path and path[0] == "self":
                path = path[1:]
            if not path or path[0] in ("std", "core", "alloc"):
                continue
            if path[0] == "crate":
                full = path[1:]
            elif path[0] == "super":
                full = list(mod[:-1]) + path[1:]
            elif tuple(mod) + (path[0],) in files:
                full = list(mod) + path
            else:
                continue
            reexports[(mod, path[-1])] = full


def owner(path, depth=0):
    """The file module that owns the item a crate-absolute path names."""
    best = ()
    for i in range(len(path), 0, -1):
        if tuple(path[:i]) in files:
            best = tuple(path[:i])
            break
    rest = path[len(best):]
    if rest and (best, rest[0]) in reexports and depth < 8:
        return owner(reexports[(best, rest[0])], depth + 1)
    return best


edges = {m: set() for m in files}
for mod, text in texts.items():
    paths = []
    for stmt in re.findall(r"\buse\s+((?:crate|super|self)\b[^;]*);", text):
        paths += expand([], stmt)
    for inline in re.findall(r"(?<![\w:])((?:crate|super)(?:::\w+)+)", text):
        paths.append(inline.split("::"))
    for path in paths:
        if path[0] == "crate":
            full = path[1:]
        else:
            base = list(mod)
            while path and path[0] in ("super", "self"):
                if path[0] == "super":
                    base = base[:-1]
                path = path[1:]
            full = base + path
        target = owner(full)
        if target == mod:
            continue
        if target == mod[:-1] or mod == target[:-1]:
            continue  # a parent and its own child
        edges[mod].add(target)

# Tarjan's strongly connected components.
index, low, stack, on, sccs = {}, {}, [], set(), []
counter = [0]


def strong(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(edges[v]):
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))


sys.setrecursionlimit(10000)
for v in sorted(edges):
    if v not in index:
        strong(v)


def name(m):
    return files[m]


if not sccs:
    print(f"import-cycles: no circles among {len(files)} files")
    sys.exit(0)
for comp in sccs:
    members = set(comp)
    print("import circle: " + ", ".join(name(m) for m in comp))
    for m in comp:
        for t in sorted(edges[m] & members):
            print(f"    {name(m)} -> {name(t)}")
sys.exit(1)
