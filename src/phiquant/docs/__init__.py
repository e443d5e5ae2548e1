"""Documentation generated from the code itself (kept in sync with README.md by tests)."""
