"""Developer stack: runs the whole platform on one machine (embedded PostgreSQL, bundled broker) and benchmarks it."""
