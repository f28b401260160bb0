"""PLACEHOLDER: replaced by the dataverse implementation."""

from aiohttp import web

from sandbox.httpcommon import make_app


def create_store(state):
    return None


create_service = create_store


def build_app(state):
    return make_app(state, "dataverse")


def register_admin_routes(app: web.Application, prefix: str) -> None:
    return None
