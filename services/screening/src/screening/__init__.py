"""Screening service: records every screening in its organisation's own PostgreSQL schema."""
