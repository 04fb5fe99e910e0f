"""Operator commands that span every service of the platform: ``clinomic-ops backup`` and ``restore``
(see docs/operations.md)."""
