"""The HTTP API process: Flask + flask-smorest over the domain functions in ``shared``."""
