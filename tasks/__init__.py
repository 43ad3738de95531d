"""Thin Celery tasks: load state, call the core, record the outcome."""
