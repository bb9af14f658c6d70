"""Signed webhooks to the order services, sent from a transactional outbox."""
