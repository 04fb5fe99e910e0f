"""Contracts and plumbing every Clinomic service shares: event schemas, Kafka, database, crypto, tokens."""
