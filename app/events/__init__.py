"""Stockout events: the intake (idempotent, one job per payment) and the reads of events."""
