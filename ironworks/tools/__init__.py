"""Developer tools run from a source checkout (``python -m ironworks.tools.<name>``)."""
