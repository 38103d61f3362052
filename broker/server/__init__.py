"""minibroker."""
