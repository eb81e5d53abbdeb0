"""stirshaken-proxy: STIR/SHAKEN signing and verification service for SIP."""

__version__ = "0.1.0"
