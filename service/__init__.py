"""zepix-hub: the real-time heartbeat of the Zepix trading bot's dashboard."""

__version__ = "0.1.0"
