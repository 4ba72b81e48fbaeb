"""End-to-end tests: whole provisioning flows on virtual machines booting inside the lab (tests/lab)."""
