"""How many of two runs' generations are identical, and where the first differing ones part.

    python benchmarks/same_outputs.py runs/texts_static.json runs/texts_plain.json
    python benchmarks/same_outputs.py --first 64 runs/texts_static.json runs/texts_plain.json

Each file is a JSON list of generated texts for the same prompts in the same order (what
``eval_speed.py --generation --texts FILE`` writes). Prints the count of identical outputs and,
for up to three that differ, the common prefix's length and the next characters of each.
``--first N`` compares the first N of each (a run over fewer prompts). Exits 1 when any differ,
2 when the files do not hold lists of the same length (of at least N).
"""

from __future__ import annotations

import argparse
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first_file", metavar="FIRST.json")
    parser.add_argument("second_file", metavar="SECOND.json")
    parser.add_argument("--first", type=int, default=None, metavar="N", help="compare the first N outputs only")
    args = parser.parse_args(argv)
    try:
        first, second = (json.loads(open(path, encoding="utf-8").read()) for path in (args.first_file, args.second_file))
    except (OSError, ValueError) as error:
        print(f"same_outputs.py: cannot read the outputs: {error}", file=sys.stderr)
        return 2
    if not (isinstance(first, list) and isinstance(second, list)):
        print("same_outputs.py: each file must hold a JSON list of texts", file=sys.stderr)
        return 2
    n = args.first if args.first is not None else len(first)
    if (args.first is None and len(first) != len(second)) or min(len(first), len(second)) < n:
        print(f"same_outputs.py: {args.first_file} has {len(first)} outputs and {args.second_file} {len(second)}; "
              f"{'--first ' + str(n) + ' needs that many in each' if args.first is not None else 'they must match'}",
              file=sys.stderr)
        return 2
    return compare(first[:n], second[:n])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
