"""The web process: the app factory and its lifespan, HTTP and WebSocket routes, auth, metrics, uvicorn.

It sits on the hub and the store; only the cli imports it (docs/adr/0012-concern-packages.md).
"""
