"""``python -m mtgrad``: the same as the ``mtgrad`` console script."""

import sys

from mtgrad.cli import main

if __name__ == "__main__":
    sys.exit(main())
