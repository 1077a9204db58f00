"""`python -m ca.cli`: the `meshca` command."""

import sys

from ca.cli.main import main

sys.exit(main())
