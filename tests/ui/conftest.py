"""UI tests run against replay files and fixed terminal sizes, so they never need root or an engine."""
