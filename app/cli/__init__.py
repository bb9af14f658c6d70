"""The `stockout` command: keys on the database, everything else through the REST API."""
