"""Accounts, the number inventory, attestation (pure)."""
