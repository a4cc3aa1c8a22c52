"""``python -m smlp_kernels.bench``: the same as the ``smlp-bench`` command."""

import sys

from .cli import main

sys.exit(main())
