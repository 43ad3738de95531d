"""Settings, provider accounts and logging. Imports nothing else of refundq."""
