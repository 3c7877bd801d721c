"""C{python -m pgdoorman.workers}: one worker process (the supervisor starts them).

pgdoorman's reactor is installed before anything else is imported: the worker's modules
bring in Twisted code that would otherwise install the default one.
"""

import sys

from ..app.tap import install_default_reactor

install_default_reactor()

from .worker import main  # noqa: E402 - after the reactor, on purpose

sys.exit(main())
