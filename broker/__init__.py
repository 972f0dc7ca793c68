"""The Celery side shared by producer and workers: app factory and queue names (no torch)."""

from broker.app import make_celery

__all__ = ["make_celery"]
