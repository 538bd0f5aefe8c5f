#!/usr/bin/env python3
"""Module import circles in the workspace's crates: exits 1 and names each circle.

A module here is one source file (src/a/b.rs or src/a/b/mod.rs is `a::b`). An import is any
path in code (not comments, not a `#[cfg(test)] mod tests` block) that starts with `crate::`
or `super::`, resolved to the longest module prefix that is a file of the crate: `use
crate::store::rows::X` imports store/rows.rs, `crate::store::Store` imports store/mod.rs.
A child's `super::x` is its parent module, or the sibling `x` when that is a module.
A parent module's own use of its children (`sqlite::SqliteStore` in store/mod.rs) is
containment, not an import, and is not counted. The crate root (lib.rs, main.rs) declares
and re-exports every module, so it is left out.

    python3 scripts/check-layers.py            # every crate under crates/
    python3 scripts/check-layers.py --graph    # also print each module's imports
"""

import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
BRACED = re.compile(r"\b(crate|super)::\{([^}]*)\}")


CHAR = re.compile(r"'(?:\\(?:x[0-9a-fA-F]{2}|u\{[0-9a-fA-F]+\}|.)|[^\\'\n])'")
RAW = re.compile(r'r(#*)"')


def strip(text):
    """Source without comments, string and char literals, or the unit-test module."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and RAW.match(text, i) and not (i and (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = RAW.match(text, i).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and CHAR.match(text, i):
            i = CHAR.match(text, i).end()
            out.append("' '")
        else:
            out.append(c)
            i += 1
    code = "".join(out)
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests\b", code)
    return code[: cut.start()] if cut else code


def modules(src):
    mods = {}
    for path in src.rglob("*.rs"):
        rel = path.relative_to(src).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "mod":
            parts = parts[:-1]
        if parts in (["lib"], ["main"]):
            parts = []
        if parts and parts[0] == "bin":
            continue
        mods[tuple(parts)] = path
    return mods


def resolve(mods, base, rest):
    """The longest module prefix of base + rest that is a file of the crate."""
    full = list(base) + rest
    for n in range(len(full), -1, -1):
        if tuple(full[:n]) in mods:
            return tuple(full[:n])
    return None


def imports(mods, me, path):
    text = strip(path.read_text())
    is_dir_mod = path.name == "mod.rs" or path.name in ("lib.rs", "main.rs")
    parent = me if is_dir_mod else me[:-1]
    found = set()
    refs = []
    for m in BRACED.finditer(text):
        for item in m.group(2).split(","):
            item = item.strip().split(" as ")[0]
            if item and item not in ("self", "*"):
                refs.append((m.group(1), item.split("::")))
    for m in PATH.finditer(text):
        if m.group(2) != "::{":
            refs.append((m.group(1), m.group(2).strip(":").split("::")))
    for head, rest in refs:
        if head == "crate":
            target = resolve(mods, (), rest)
        else:
            base = parent[:-1] if is_dir_mod else parent
            target = resolve(mods, base, rest)
        if target is not None and target != me:
            found.add(target)
    return found


def circles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def name(m):
    return "::".join(m) or "(root)"


def main():
    root = Path(__file__).resolve().parent.parent
    show = "--graph" in sys.argv
    bad = 0
    for src in sorted(root.glob("crates/*/src")):
        crate = src.parent.name
        mods = modules(src)
        graph = {m: imports(mods, m, p) for m, p in mods.items()}
        # The crate root (lib.rs) declares and re-exports every module: not a layer.
        graph.pop((), None)
        for deps in graph.values():
            deps.discard(())
        if show:
            for m in sorted(graph):
                print(f"{crate} {name(m)} -> {', '.join(sorted(map(name, graph[m]))) or '-'}")
        for comp in circles(graph):
            bad += 1
            print(f"{crate}: import circle: {' <-> '.join(map(name, comp))}")
            for m in comp:
                back = sorted(name(d) for d in graph[m] if d in comp)
                print(f"    {name(m)} imports {', '.join(back)}")
    if bad:
        print(f"{bad} import circle(s): move what both sides need into a module below both")
        return 1
    print("no import circles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
