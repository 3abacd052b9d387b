"""``python -m stemdeck``: the same as the ``stemdeck`` command."""

import sys

from .cli import main

sys.exit(main())
