"""The front layer (``api.front.layer``) and its routes: the requests answered before Flask."""

from __future__ import annotations

from api.context import Services
from api.front.job_list import JobList
from api.front.job_read import JobRead
from api.front.layer import FrontLayer, WsgiApp
from api.front.trigger import Trigger


def install(services: Services, flask_wsgi_app: WsgiApp) -> FrontLayer:
    """The layer in front of Flask's WSGI callable, serving the common trigger, job read and jobs list."""
    return FrontLayer(services, (Trigger(services), JobRead(), JobList()), flask_wsgi_app)
