"""Small shared utilities (atomic file writes, errors for user-supplied files)."""
