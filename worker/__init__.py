"""The refundq core: models, state machine, store, transport, producer API, Celery app, CLI."""
