"""``python -m edge.cli``: the ``bdi`` command (what ``bdi up`` runs its children with)."""

import sys

from edge.cli.main import main

sys.exit(main())
