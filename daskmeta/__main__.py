"""``python -m daskmeta``: the command line."""

import sys

from daskmeta.cli import main

if __name__ == "__main__":
    sys.exit(main())
