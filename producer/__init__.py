"""Enqueue generation jobs.  Imports neither torch nor the worker code: tasks go by name."""

from producer.producer import Producer

__all__ = ["Producer"]
