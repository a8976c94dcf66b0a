import sys

from creditlab.cli import main

sys.exit(main())
