"""The REST API: Ironic's Bare Metal API v1 (the subset Ironworks serves) and the agent endpoints."""
