"""SIP message layer: parsing, byte-level edits, URIs, telephone numbers, TCP framing (pure)."""
