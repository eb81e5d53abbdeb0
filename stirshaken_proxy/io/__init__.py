"""The I/O shell: sockets, HTTP, metrics. Everything here is glue around the pure engine."""
