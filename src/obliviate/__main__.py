"""`python -m obliviate`: the command line (obliviate.cli)."""

import sys

from obliviate.cli import main

if __name__ == "__main__":
    sys.exit(main())
