"""HTTP handlers: thin adapters between requests and the ingest pipeline."""
