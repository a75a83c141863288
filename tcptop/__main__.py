"""`python -m tcptop` is the `tcptop` command."""

import sys

from tcptop.cli import main

sys.exit(main())
