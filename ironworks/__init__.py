"""Ironworks: bare-metal provisioning and fleet maintenance, speaking Ironic's Bare Metal API v1."""

__version__ = "0.1.0"
