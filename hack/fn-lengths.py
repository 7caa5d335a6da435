#!/usr/bin/env python3
"""Prints the longest Rust functions under the given paths: `hack/fn-lengths.py src/reconciler`.

A function runs from its `fn` line to the line of its matching closing brace (string and
comment contents are skipped, well enough for formatted code)."""
import re
import sys
from pathlib import Path

FN = re.compile(r'^\s*(pub(\([^)]*\))?\s+)?(async\s+)?(const\s+)?fn\s+(\w+)')


def functions(path):
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            code = re.sub(r'"(\\.|[^"\\])*"|//.*', '', lines[j])
            if not started and ';' in code and '{' not in code:
                break  # a declaration without a body (trait method)
            for ch in code:
                if ch == '{':
                    depth += 1
                    started = True
                elif ch == '}':
                    depth -= 1
            if started and depth == 0:
                yield (j - i + 1, f"{path}:{i + 1}", m.group(5))
                break
            j += 1
        i += 1


def main():
    found = []
    for root in sys.argv[1:] or ['src']:
        for path in sorted(Path(root).rglob('*.rs')) if Path(root).is_dir() else [Path(root)]:
            found.extend(functions(path))
    for length, where, name in sorted(found, reverse=True)[:10]:
        print(f"{length:4} lines  {name:40} {where}")


main()
