"""`python -m creditlab.cli`, as the console script."""

import sys

from creditlab.cli.main import main

sys.exit(main())
