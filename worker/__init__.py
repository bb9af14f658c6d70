"""Celery workers: `celery -A worker worker` and `celery -A worker beat`."""

from worker.celery_app import app

__all__ = ["app"]
