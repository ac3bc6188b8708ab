"""``python -m blackbox_lime`` is the ``blackbox-lime`` command."""

import sys

from cli import main

sys.exit(main())
