"""``python -m stemdeck``: the same as the ``stemdeck`` command."""

import sys

from stemdeck.cli import main

sys.exit(main())
