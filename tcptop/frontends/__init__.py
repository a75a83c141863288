"""Front ends: what a user reads snapshots through (the screen, --json, the exporter)."""
