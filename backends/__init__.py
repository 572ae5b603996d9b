"""Adapters behind the pipeline's three interfaces: image model, store, screener."""
