"""Operator commands: API keys (the hashed key file, `flask keys`) and `flask records prune`."""
