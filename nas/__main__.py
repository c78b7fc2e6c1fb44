"""``python -m nas``: the ``nas`` command (also what ``torchrun -m nas`` starts in each process)."""

import sys

from nas.cli import main

sys.exit(main())
