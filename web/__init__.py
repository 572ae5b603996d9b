"""The HTTP layer's plumbing: problem answers, request schema, OpenAPI, auth, limits, CORS, logs, metrics."""
