"""``python3 -m ironworks.agent``: what the ramdisk runs."""

import sys

from ironworks.agent.main import main

sys.exit(main())
