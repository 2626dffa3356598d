"""gunicorn's own log lines (start, worker boot and exit, errors) as the same JSON lines as Sluice's.

``sluice api`` passes ``--logger-class api.gunicorn_logging.JsonLogger``. Every request is already logged
once by the API's request log (``api.request_log``), which never writes query strings: gunicorn's access
log would repeat each request with its query string, so this logger writes none, whatever
``--access-logfile`` or ``GUNICORN_CMD_ARGS`` say.
"""

from __future__ import annotations

from typing import Any

from gunicorn.glogging import Logger

from shared.config import Settings
from shared.logs import JsonFormatter


class JsonLogger(Logger):  # type: ignore[misc]  # gunicorn ships no type hints
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        if not Settings.from_env().log_json:
            return
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter("api"))
        for handler in list(self.access_log.handlers):
            self.access_log.removeHandler(handler)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return  # the request log (api.request_log) writes one line per request
