"""``python -m irllrec_dist.bench <subcommand> [...]``."""

import sys

from irllrec_dist.bench import main

sys.exit(main())
