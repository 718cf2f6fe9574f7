"""``python -m streams.cli`` runs the ``stageroute`` command."""

import sys

from streams.cli import main

sys.exit(main())
