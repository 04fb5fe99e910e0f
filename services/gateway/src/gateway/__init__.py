"""Gateway: the only public entry point. Authenticates, rate-limits, publishes screening commands, routes REST."""
