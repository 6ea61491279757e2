"""API keys: creation, listing, revocation and verification of the keys that call the API."""
