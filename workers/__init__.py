"""tokenrelay workers: Celery adapter, decode engine, Redis publisher (imports torch lazily)."""
