"""API-key administration: the hashed key file and the `flask keys` commands."""
