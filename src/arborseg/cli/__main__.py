"""``python -m arborseg.cli``: the same as the ``arborseg`` command."""

import sys

from arborseg.cli.main import main

sys.exit(main())
