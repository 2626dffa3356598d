"""Storage: the engine and sessions, the models, migrations, prepared statements and locks."""
