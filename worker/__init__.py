"""Worker process: runs attempts (claim, limits, call, record) as Dramatiq actors."""
