"""``python -m sidecar``: run the sidecar process."""

import sys

from sidecar.cli import main

sys.exit(main())
