"""`python -m toolkit …`: the command line (see toolkit.cli)."""
import sys

from toolkit.cli import main

sys.exit(main())
