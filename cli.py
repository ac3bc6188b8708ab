"""The ``blackbox-lime`` command from a source checkout: ``python cli.py ...``.

The command's code lives in the package (blackbox_lime/cli/); the installed ``blackbox-lime`` script and
``python -m blackbox_lime`` run the same :func:`blackbox_lime.cli.main`.
"""

import sys

from blackbox_lime.cli import main

if __name__ == "__main__":
    sys.exit(main())
