"""``python -m ironworks.db.migrate``: bring ``$IRONWORKS_MIGRATE_URL`` to the newest schema, then exit.

Run as a child of ``ironworks serve`` so the server itself never loads Alembic.
"""

from __future__ import annotations

import os
import sys

from ironworks.db.engine import Database
from ironworks.db.secrets import SecretBox


def main() -> int:
    """Migrate the database named by ``$IRONWORKS_MIGRATE_URL``."""
    url = os.environ.get("IRONWORKS_MIGRATE_URL")
    if not url:
        print("set IRONWORKS_MIGRATE_URL to the database URL", file=sys.stderr)
        return 2
    # migrations never read secrets: any valid key will do
    db = Database(url, secrets=SecretBox(SecretBox.generate_key()))
    try:
        db.upgrade()
    finally:
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
