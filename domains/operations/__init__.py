"""Long-running operations (AIP-151), shared by every domain: one table in each domain schema."""
