"""Rendering console pages: the page helper and the template filters (times, JSON, durations)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, g, render_template, request
from markupsafe import Markup, escape

from api.console.forms import flat_errors
from shared.clock import format_ts
from shared.runs.status import TERMINAL

TERMINAL_VALUES = frozenset(s.value for s in TERMINAL)


def page(template: str, *, status: int = 200, live: bool = False, **context: Any) -> Response:
    """A console page (``templates/console/<template>``). ``live``: something on it is still moving, so
    the page refreshes itself in the browser."""
    body = render_template(f"console/{template}", visitor=g.get("console_visitor"), live=live, **context)
    return Response(body, status=status, mimetype="text/html")


def when(value: Any) -> Markup:
    """A time for the browser to show in its own zone (``console.js``), with UTC on hover."""
    if value is None or value == "":
        return Markup('<span class="muted">—</span>')
    text = format_ts(value) if isinstance(value, datetime) else str(value)
    return Markup('<time datetime="{0}" title="{0} UTC">{0}</time>').format(escape(text))


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False)


def seconds(value: Any) -> str:
    if value is None:
        return "—"
    secs = float(value)
    if secs < 1:
        return f"{secs * 1000:.0f} ms"
    if secs < 120:
        return f"{secs:.1f} s"
    if secs < 7200:
        return f"{secs / 60:.1f} min"
    return f"{secs / 3600:.1f} h"


def is_terminal(status: str) -> bool:
    return status in TERMINAL_VALUES


def with_args(**changes: Any) -> str:
    """This page's URL with query arguments changed (``None`` removes one), the others kept."""
    args = [(k, v) for k, v in request.args.items(multi=True) if k not in changes]
    args += [(k, str(v)) for k, v in changes.items() if v is not None]
    return request.path + ("?" + urlencode(args) if args else "")


def register_filters(app: Flask) -> None:
    app.jinja_env.filters.update(when=when, pretty=pretty, seconds=seconds, flat_errors=flat_errors)
    app.jinja_env.globals.update(is_terminal=is_terminal, with_args=with_args)
