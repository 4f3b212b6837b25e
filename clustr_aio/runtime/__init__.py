"""The process model: listening sockets, the supervisor and its workers, systemd's readiness
and watchdog, the graceful drain."""
