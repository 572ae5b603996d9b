"""Asynchronous jobs: a durable queue and job states, the worker that runs them, signed webhooks."""
