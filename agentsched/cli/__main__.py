"""`python -m agentsched.cli`: the same as the `agentsched` command."""

import sys

from agentsched.cli import main

sys.exit(main())
