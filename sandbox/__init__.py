"""Emulators of the four providers, for the demo, tests and benchmarks. Never a real provider."""
