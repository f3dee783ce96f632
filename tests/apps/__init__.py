"""App modules that worker subprocesses load in tests."""
