"""Triggers: manual, bulk and cron runs, and trigger payloads."""
