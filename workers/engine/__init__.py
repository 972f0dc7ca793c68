"""The decode engine: plain Python + torch; knows nothing of Celery or Redis."""
