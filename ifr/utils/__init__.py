"""Small helpers shared across the package (process-group communication)."""
