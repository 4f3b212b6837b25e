"""What the service tells its operators: log records, the access log, Prometheus metrics."""
