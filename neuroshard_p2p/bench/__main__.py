"""`python -m neuroshard_p2p.bench`: see the package docstring."""

import sys

from neuroshard_p2p.bench import main

sys.exit(main())
