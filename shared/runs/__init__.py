"""Runs: statuses and transitions, creation, attempts, retries, queries, cancel and replay."""
