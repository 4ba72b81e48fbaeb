"""Drivers: hardware types composed of small interfaces (power, management, boot, deploy ...)."""
