"""``python -m streamer.ops.cli``: the same as the ``streamer`` command."""

import sys

from streamer.ops.cli import main

if __name__ == "__main__":
    sys.exit(main())
