#!/usr/bin/env python3
"""Lists the crate's public API from rustdoc's JSON output, one item a line, sorted.

    python3 .ci/public-api.py target/doc/icap.json > tests/public-api.txt

Every item reachable from the crate root is listed at every path a user can name it by
(modules, re-exports followed), with its signature: modules, structs and their public
fields, enums and their variants, traits and their items, functions, inherent methods and
associated constants of public types, constants, statics, type aliases, and the traits each
public type implements (blanket implementations left out). The script fails (exit 1) when
an item other than a module can be named by two public paths: one public path per type.
"""
import json
import sys

doc = json.load(open(sys.argv[1]))
index = doc["index"]
CRATE = index[str(doc["root"])]["name"]


def item(i):
    return index.get(str(i))


def kind(it):
    return next(iter(it["inner"]))


# --- types -----------------------------------------------------------------------------------


def generic_args(a):
    if not a:
        return ""
    if "angle_bracketed" in a:
        ab = a["angle_bracketed"]
        parts = []
        for g in ab["args"]:
            if "type" in g:
                parts.append(ty(g["type"]))
            elif "lifetime" in g:
                parts.append(g["lifetime"])
            elif "const" in g:
                parts.append(g["const"].get("expr", "_"))
            else:
                parts.append("_")
        for c in ab.get("constraints", []):
            b = c.get("binding", {})
            if "equality" in b:
                eq = b["equality"]
                parts.append(f"{c['name']} = {ty(eq['type']) if 'type' in eq else '_'}")
            elif "constraint" in b:
                parts.append(f"{c['name']}: {bounds(b['constraint'])}")
        return "<" + ", ".join(parts) + ">" if parts else ""
    if "parenthesized" in a:
        p = a["parenthesized"]
        out = "(" + ", ".join(ty(t) for t in p["inputs"]) + ")"
        if p.get("output"):
            out += " -> " + ty(p["output"])
        return out
    return ""


def path_of(p):
    return p["path"].split("::")[-1] + generic_args(p.get("args"))


def bounds(bs):
    out = []
    for b in bs:
        if "trait_bound" in b:
            tb = b["trait_bound"]
            m = {"maybe": "?", "maybe_const": "~const "}.get(tb.get("modifier"), "")
            hr = ""
            if tb.get("generic_params"):
                hr = "for<" + ", ".join(g["name"] for g in tb["generic_params"]) + "> "
            out.append(m + hr + path_of(tb["trait"]))
        elif "outlives" in b:
            out.append(b["outlives"])
        elif "use" in b:
            out.append("use<" + ", ".join(str(x) for x in b["use"]) + ">")
    return " + ".join(out)


def ty(t):
    if t is None:
        return "()"
    k, v = next(iter(t.items()))
    if k == "resolved_path":
        return path_of(v)
    if k == "generic":
        return v
    if k == "primitive":
        return v
    if k == "borrowed_ref":
        lt = (v["lifetime"] + " ") if v.get("lifetime") else ""
        return "&" + lt + ("mut " if v["is_mutable"] else "") + ty(v["type"])
    if k == "raw_pointer":
        return "*" + ("mut " if v["is_mutable"] else "const ") + ty(v["type"])
    if k == "tuple":
        return "(" + ", ".join(ty(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if k == "slice":
        return "[" + ty(v) + "]"
    if k == "array":
        return "[" + ty(v["type"]) + "; " + v["len"] + "]"
    if k == "impl_trait":
        return "impl " + bounds(v)
    if k == "dyn_trait":
        parts = []
        for p in v["traits"]:
            hr = ""
            if p.get("generic_params"):
                hr = "for<" + ", ".join(g["name"] for g in p["generic_params"]) + "> "
            parts.append(hr + path_of(p["trait"]))
        if v.get("lifetime"):
            parts.append(v["lifetime"])
        return "dyn " + " + ".join(parts)
    if k == "qualified_path":
        tr = v.get("trait")
        base = ty(v["self_type"])
        if tr and tr.get("path"):
            base = f"<{base} as {path_of(tr)}>"
        return base + "::" + v["name"] + generic_args(v.get("args"))
    if k == "function_pointer":
        return "fn(" + ", ".join(ty(x[1]) for x in v["sig"]["inputs"]) + ")" + (
            " -> " + ty(v["sig"]["output"]) if v["sig"].get("output") else ""
        )
    if k == "infer":
        return "_"
    return "?"


def generics(g):
    params = []
    for p in g["params"]:
        k = p["kind"]
        if "lifetime" in k:
            params.append(p["name"] + (": " + " + ".join(k["lifetime"]["outlives"]) if k["lifetime"]["outlives"] else ""))
        elif "type" in k:
            if k["type"].get("is_synthetic"):
                continue
            b = bounds(k["type"]["bounds"])
            params.append(p["name"] + (": " + b if b else ""))
        elif "const" in k:
            params.append(f"const {p['name']}: {ty(k['const']['type'])}")
    return "<" + ", ".join(params) + ">" if params else ""


def where(g):
    preds = []
    for w in g["where_predicates"]:
        if "bound_predicate" in w:
            bp = w["bound_predicate"]
            preds.append(ty(bp["type"]) + ": " + bounds(bp["bounds"]))
        elif "lifetime_predicate" in w:
            lp = w["lifetime_predicate"]
            preds.append(lp["lifetime"] + ": " + " + ".join(lp["outlives"]))
        elif "eq_predicate" in w:
            ep = w["eq_predicate"]
            preds.append(ty(ep["lhs"]) + " = " + (ty(ep["rhs"]["type"]) if "type" in ep["rhs"] else "_"))
    return " where " + ", ".join(preds) if preds else ""


def fn_sig(name, f):
    h = f["header"]
    q = ("const " if h["is_const"] else "") + ("async " if h["is_async"] else "") + (
        "unsafe " if h["is_unsafe"] else ""
    )
    args = []
    for n, t in f["sig"]["inputs"]:
        if n == "self":
            s = ty(t)
            args.append({"Self": "self", "&Self": "&self", "&mut Self": "&mut self"}.get(s, "self: " + s))
        else:
            args.append(f"{n}: {ty(t)}")
    out = f"{q}fn {name}{generics(f['generics'])}({', '.join(args)})"
    if f["sig"].get("output") is not None:
        out += " -> " + ty(f["sig"]["output"])
    return out + where(f["generics"])


# --- walk ------------------------------------------------------------------------------------

lines = set()
paths_of = {}  # item id -> public paths


def public(it):
    return it.get("visibility") == "public"


def members(path, it, in_trait=False):
    """The items of an impl or a trait, at `path`."""
    for i in it:
        m = item(i)
        if m is None or (not in_trait and not public(m)):
            continue
        k = kind(m)
        inner = m["inner"][k]
        if k == "function":
            lines.add(f"{path}::{fn_sig(m['name'], inner)}".replace(f"{path}::", f"fn {path}::", 1).replace(f"fn {path}::fn ", f"fn {path}::", 1))
        elif k == "assoc_const":
            lines.add(f"const {path}::{m['name']}: {ty(inner['type'])}")
        elif k == "assoc_type":
            b = bounds(inner.get("bounds", []))
            t = " = " + ty(inner["type"]) if inner.get("type") else ""
            lines.add(f"type {path}::{m['name']}{': ' + b if b else ''}{t}")


# Marker traits the compiler implements that no user can name on stable.
NOT_API = {"Freeze", "UnsafeUnpin", "StructuralPartialEq"}


def impls(path, ids):
    for i in ids:
        im = item(i)
        if im is None:
            continue
        imp = im["inner"]["impl"]
        if imp.get("blanket_impl") is not None:
            continue
        if imp["trait"] is None:
            members(path, imp["items"])
        elif imp["trait"]["path"].split("::")[-1] not in NOT_API:
            neg = "!" if imp.get("is_negative") else ""
            g = generics(imp["generics"])
            w = where(imp["generics"])
            cond = f" [{g[1:-1]}{w}]" if g or w else ""
            lines.add(f"impl {path}: {neg}{path_of(imp['trait'])}{cond}")


def visit(path, it, seen):
    iid = it["id"]
    k = kind(it)
    inner = it["inner"][k]
    if k != "module":
        paths_of.setdefault(iid, set()).add(path)
    if (iid, path) in seen:
        return
    seen.add((iid, path))
    if k == "module":
        lines.add(f"mod {path}")
        for c in inner["items"]:
            child = item(c)
            if child is None or not public(child):
                continue
            if kind(child) == "use":
                u = child["inner"]["use"]
                target = item(u["id"]) if u.get("id") is not None else None
                if target is None:
                    lines.add(f"use {path}::{u['name']} = {u['source']}")
                    continue
                if u["is_glob"]:
                    for g in target["inner"].get("module", {}).get("items", []):
                        gi = item(g)
                        if gi is not None and public(gi) and gi.get("name"):
                            visit(f"{path}::{gi['name']}", gi, seen)
                else:
                    visit(f"{path}::{u['name']}", target, seen)
            elif kind(child) == "impl":
                continue
            elif child.get("name"):
                visit(f"{path}::{child['name']}", child, seen)
    elif k == "struct":
        sk = inner["kind"]
        lines.add(f"struct {path}{generics(inner['generics'])}{where(inner['generics'])}")
        if isinstance(sk, dict) and "plain" in sk:
            for f in sk["plain"]["fields"]:
                fi = item(f)
                if fi is not None and public(fi):
                    lines.add(f"field {path}::{fi['name']}: {ty(fi['inner']['struct_field'])}")
        elif isinstance(sk, dict) and "tuple" in sk:
            for n, f in enumerate(sk["tuple"]):
                fi = item(f) if f is not None else None
                if fi is not None and public(fi):
                    lines.add(f"field {path}::{n}: {ty(fi['inner']['struct_field'])}")
        impls(path, inner["impls"])
    elif k == "enum":
        lines.add(f"enum {path}{generics(inner['generics'])}{where(inner['generics'])}")
        for v in inner["variants"]:
            vi = item(v)
            vk = vi["inner"]["variant"]["kind"]
            vp = f"{path}::{vi['name']}"
            if vk == "plain":
                lines.add(f"variant {vp}")
            elif "tuple" in vk:
                ts = [ty(item(f)["inner"]["struct_field"]) if f is not None else "_" for f in vk["tuple"]]
                lines.add(f"variant {vp}({', '.join(ts)})")
            elif "struct" in vk:
                lines.add(f"variant {vp} {{ .. }}")
                for f in vk["struct"]["fields"]:
                    fi = item(f)
                    lines.add(f"field {vp}::{fi['name']}: {ty(fi['inner']['struct_field'])}")
        impls(path, inner["impls"])
    elif k == "union":
        lines.add(f"union {path}")
        impls(path, inner["impls"])
    elif k == "trait":
        sealed = ""
        b = bounds(inner.get("bounds", []))
        lines.add(f"trait {path}{generics(inner['generics'])}{': ' + b if b else ''}{sealed}")
        members(path, inner["items"], in_trait=True)
    elif k == "function":
        lines.add(f"fn {path.rsplit('::', 1)[0]}::{fn_sig(it['name'] if path.endswith(it['name']) else path.rsplit('::', 1)[1], inner)}")
    elif k == "type_alias":
        lines.add(f"type {path}{generics(inner['generics'])} = {ty(inner['type'])}")
    elif k == "constant":
        lines.add(f"const {path}: {ty(inner['type'])}")
    elif k == "static":
        lines.add(f"static {path}: {ty(inner['type'])}")
    elif k == "macro":
        lines.add(f"macro {path}!")
    else:
        lines.add(f"{k} {path}")


visit(CRATE, index[str(doc["root"])], set())
for line in sorted(lines):
    print(line)

dups = {i: sorted(p) for i, p in paths_of.items() if len(p) > 1}
if dups:
    for i, p in sorted(dups.items(), key=lambda x: x[1]):
        print("public-api: one item at two public paths: " + ", ".join(p), file=sys.stderr)
    sys.exit(1)
