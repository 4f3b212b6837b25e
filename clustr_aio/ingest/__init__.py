"""The ingest pipeline: multipart parts in, validated files published to storage. No HTTP here."""
