"""Where uploaded bytes live: a small core protocol and its implementations."""
