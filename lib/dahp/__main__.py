"""``python -m dahp``: the command line of :mod:`dahp.cli`."""

import sys

from dahp.cli import main

if __name__ == "__main__":
    sys.exit(main())
