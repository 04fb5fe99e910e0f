"""Auth service: organisations, users, roles, passwords and the tokens every other service verifies."""
