"""STIR/SHAKEN: PASSporT and Identity header, signing, verification, certificates (pure CPU)."""
