"""``python -m rlflat.probe``: see :mod:`rlflat.probe.run`."""

import sys

from rlflat.cli import run_cli
from rlflat.probe.run import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
