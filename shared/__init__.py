"""Sluice's own shared code: settings, models, domain logic. Imports no process package."""
