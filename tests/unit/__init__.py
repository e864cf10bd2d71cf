"""Unit tests: fast, no network, no GPU."""
