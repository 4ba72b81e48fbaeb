"""The conductor: claims queued actions for the nodes it owns and runs their flows."""
