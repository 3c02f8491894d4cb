"""``python -m ecf8_cli``: the same as the ``ecf8`` console script."""

import sys

from ecf8_cli.cli import main

sys.exit(main())
