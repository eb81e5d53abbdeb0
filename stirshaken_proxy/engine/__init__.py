"""The pure proxy engine: receive(data, peer, now) -> actions."""
