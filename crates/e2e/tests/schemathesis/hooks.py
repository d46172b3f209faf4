"""Schemathesis hooks for the run against a live Natter server.

crates/e2e/tests/e2e/openapi.rs starts the server and names it and the credentials in the
environment.

Auth: every request carries a session token of the test's user. Some operations end the
token they are called with (`DELETE /v1/sessions/current`, `DELETE /v1/me/devices/{id}` of
its own device), so the token is fetched by logging in, and fetched again after any 401
(Schemathesis' default `retry_on`). `/metrics` takes the metrics token instead.
"""

import os

import requests
import schemathesis
from schemathesis.transport.requests import binary_serializer

BASE = os.environ["NATTER_ST_BASE"]
HANDLE = os.environ["NATTER_ST_HANDLE"]
PASSWORD = os.environ["NATTER_ST_PASSWORD"]
METRICS_TOKEN = os.environ["NATTER_ST_METRICS_TOKEN"]

# tus-style upload chunks are raw bytes like any other.
schemathesis.serializer("application/offset+octet-stream")(binary_serializer)


@schemathesis.auth()
class Login:
    def get(self, case, context):
        response = requests.post(
            f"{BASE}/v1/sessions",
            json={"handle": HANDLE, "password": PASSWORD, "device": "schemathesis"},
            timeout=30,
        )
        if response.status_code != 201:
            raise RuntimeError(f"login: {response.status_code} {response.text}")
        return response.json()["token"]

    def set(self, case, data, context):
        case.headers = case.headers or {}
        token = METRICS_TOKEN if case.operation.path == "/metrics" else data
        case.headers["Authorization"] = f"Bearer {token}"
