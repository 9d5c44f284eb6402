#!/usr/bin/env python3
"""Check that the engine's files call each other in floors, not circles.

Reads the C files of hw/mem/memdedup/ (and hw/mem/ksm-backend.c), finds
which file defines each non-static memdedup_* function and which
memdedup_* functions each file calls, and prints the file graph.  Exits
1 if some files call each other in a loop (the loop is printed), else
0.  Usage: layers.py [--quiet]
"""

import glob
import os
import re
import sys

TOP = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def graph():
    files = sorted(glob.glob(os.path.join(TOP, "hw/mem/memdedup/*.c")))
    files.append(os.path.join(TOP, "hw/mem/ksm-backend.c"))
    defs, calls = {}, {}
    for path in files:
        text = re.sub(r"/\*.*?\*/", "", open(path).read(), flags=re.S)
        name = os.path.basename(path)
        defined = set(re.findall(r"^[a-zA-Z_][\w \*]*?\b(memdedup_\w+)\(",
                                 text, flags=re.M))
        defs[name] = {f for f in defined if not re.search(
            r"^static[^\n]*\b%s\(" % f, text, flags=re.M)}
        calls[name] = set(re.findall(r"\b(memdedup_\w+)\s*\(", text))
    owner = {}
    for name, fns in defs.items():
        for f in fns:
            owner.setdefault(f, name)
    return {name: sorted({owner[c] for c in calls[name]
                          if c in owner and owner[c] != name})
            for name in defs}


def loops(g):
    found, state, stack = [], {}, []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in g[u]:
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif not state.get(v):
                visit(v)
        stack.pop()
        state[u] = 2
    for u in g:
        if not state.get(u):
            visit(u)
    return found


def main():
    g = graph()
    if "--quiet" not in sys.argv:
        for name in sorted(g):
            print("%-16s -> %s" % (name, ", ".join(g[name])))
    bad = loops(g)
    for loop in bad:
        print("layers: call loop: %s" % " -> ".join(loop))
    print("layers: %d files, %s" % (len(g), "%d loops" % len(bad) if bad
                                     else "no call loop"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
