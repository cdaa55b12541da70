"""``python -m irllrec_dist COMMAND ...``: the ``irllrec`` command without the installed script."""

import sys

from irllrec_dist.console import main

sys.exit(main())
