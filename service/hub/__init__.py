"""The fan-out engine: the listener, the ConnectionManager with its per-client senders, the heartbeat, frames.

Data flows store -> listener -> ConnectionManager -> sockets; this package imports the store and service's
top-level modules, never api or cli (docs/adr/0012-concern-packages.md).
"""
