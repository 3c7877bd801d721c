"""python -m pgdoorman: the same as the pgdoorman command."""

import sys

from .app.cli import main

sys.exit(main())
