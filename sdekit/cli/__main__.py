"""``python -m sdekit.cli``."""

import sys

from . import main

sys.exit(main())
