"""`/api/openapi.json`: an OpenAPI 3.1 description built from the routes themselves."""

from __future__ import annotations

import re

from flask import Blueprint, current_app, jsonify

from edgebox import __version__

openapi = Blueprint("openapi", __name__)
_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def describe(app) -> dict:
    """Every /api, /tus and Axis Swift (/auth/v1.0, /v1/) route with its methods, summary,
    path parameters, and the query parameters a view lists in its `openapi_query` attribute
    ((name, description) pairs)."""
    paths: dict = {}
    for rule in app.url_map.iter_rules():
        if (
            not rule.rule.startswith(("/api/", "/tus", "/auth/", "/v1/"))
            or rule.endpoint == "static"
        ):
            continue
        path = _PARAM.sub(r"{\1}", rule.rule)
        view = app.view_functions[rule.endpoint]
        doc = (view.__doc__ or "").strip().split("\n")[0]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"} or rule.methods - {"OPTIONS"}):
            operation = {
                "operationId": f"{rule.endpoint}.{method.lower()}",
                "summary": doc,
                "responses": {
                    "2XX": {"description": "success (200, 201, 204 or 206)"},
                    "4XX": {"description": "an error with error, message, field"},
                },
            }
            names = _PARAM.findall(rule.rule)
            parameters = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in names
            ] + [
                {"name": n, "in": "query", "description": d, "schema": {"type": "string"}}
                for n, d in getattr(view, "openapi_query", ())
            ]
            if parameters:
                operation["parameters"] = parameters
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "EdgeBox local API", "version": __version__},
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "edgebox_session"},
                "device": {"type": "http", "scheme": "bearer"},
                "swift": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"},
            }
        },
        "paths": dict(sorted(paths.items())),
    }


@openapi.get("/api/openapi.json")
def document():
    """The OpenAPI description of this box's API."""
    return jsonify(describe(current_app))
