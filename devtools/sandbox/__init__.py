"""An in-memory iamport simulator (`stockout sandbox`) and a client for its control API."""
