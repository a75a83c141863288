"""Engines: what turns the kernel's state into snapshots. One folder per engine."""
