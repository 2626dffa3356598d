"""Outbound calls: which addresses Sluice may call."""
