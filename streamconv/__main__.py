"""``python -m streamconv``: the CLI, with a Ctrl-C while it starts caught like any other."""

import sys

try:
    from streamconv.cli.app import main
except KeyboardInterrupt:  # still importing: nothing was read or written
    sys.stderr.write("error: interrupted; nothing was written\n")
    raise SystemExit(130) from None

raise SystemExit(main())
