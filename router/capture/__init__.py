"""Capture: records, the Redis writer, spool, readers, consumer groups, outcomes."""
