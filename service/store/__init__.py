"""The database side: the event store, connections and pools, the migrations runner, the embedded PostgreSQL.

The bottom of the house: it imports only service's top-level modules (docs/adr/0012-concern-packages.md).
"""
