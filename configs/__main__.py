"""``python -m configs auto|dev|production``: choose the profile in the local settings file."""

import sys

from configs.profile import main

sys.exit(main())
