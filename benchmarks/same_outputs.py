"""How many of two runs' generations are identical, and where the first differing ones part.

    python benchmarks/same_outputs.py runs/texts_static.json runs/texts_plain.json

Each file is a JSON list of generated texts for the same prompts in the same order (what
``eval_speed.py --generation --texts FILE`` writes). Prints the count of identical outputs and,
for up to three that differ, the common prefix's length and the next characters of each. Exits 1
when any differ, 2 when the files do not hold lists of the same length.
"""

from __future__ import annotations

import json
import os
import sys


def compare(first: list[str], second: list[str], shown: int = 3) -> int:
    same = sum(a == b for a, b in zip(first, second))
    print(f"identical outputs: {same} of {len(first)}")
    for i, (a, b) in enumerate([(a, b) for a, b in zip(first, second) if a != b][:shown]):
        cut = len(os.path.commonprefix([a, b]))
        print(f"  differs after {cut} characters: {a[cut:cut + 40]!r} vs {b[cut:cut + 40]!r}")
    return 0 if same == len(first) else 1


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: same_outputs.py FIRST.json SECOND.json", file=sys.stderr)
        return 2
    try:
        first, second = (json.loads(open(path, encoding="utf-8").read()) for path in argv)
    except (OSError, ValueError) as error:
        print(f"same_outputs.py: cannot read the outputs: {error}", file=sys.stderr)
        return 2
    if not (isinstance(first, list) and isinstance(second, list) and len(first) == len(second)):
        print(f"same_outputs.py: {argv[0]} and {argv[1]} must be lists of the same length", file=sys.stderr)
        return 2
    return compare(first, second)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
