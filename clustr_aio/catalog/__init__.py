"""The catalog: one record per stored file (id, names, size, type, sha256, time)."""
