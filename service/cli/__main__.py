"""`python -m service.cli`: the same as the `zepix-hub` console script."""

import sys

from .main import main

sys.exit(main())
