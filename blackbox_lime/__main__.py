"""``python -m blackbox_lime`` is the ``blackbox-lime`` command."""

import sys

from blackbox_lime.cli import main

sys.exit(main())
