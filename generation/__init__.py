"""The pipeline's helpers: errors, the model registry, PNG checks, the processing gate, request records."""
