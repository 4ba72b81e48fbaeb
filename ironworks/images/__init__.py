"""Image handling: download cache, ISO building, config drives."""
