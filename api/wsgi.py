"""WSGI entry for gunicorn (``gunicorn 'api.wsgi:app'``). The app is built on first attribute access,
so importing this module does no work (PEP 562 module ``__getattr__``)."""

from __future__ import annotations

from typing import Any

_app: Any = None


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        from api.app import create_app
        from shared.config import Settings
        from shared.logs import configure_logging

        settings = Settings.from_env()
        configure_logging(settings, process="api")
        _app = create_app(settings)
    return _app
