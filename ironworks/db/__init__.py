"""Persistence: models, migrations, the database handle and secret storage."""
