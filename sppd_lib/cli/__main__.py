"""``python -m sppd_lib.cli``: the ``sppd`` command (``accelerate launch -m sppd_lib.cli``)."""

import sys

from sppd_lib.cli import main

sys.exit(main())
