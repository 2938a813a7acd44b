"""``python -m liser_core.cli`` still works: the command line lives in :mod:`liser_tools.cli`."""

import sys

from liser_tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
