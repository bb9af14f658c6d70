"""What every domain stands on: the database, the broker publisher, the clocks and the errors."""
