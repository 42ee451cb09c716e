"""Schemathesis hooks for Keel's CI: a bearer token that is re-issued when revoked.

The generated calls include sign-out and session revocation, which end the token they run
with; each case therefore signs in again when the previous token stopped working.
"""
import json
import os
import urllib.error
import urllib.request

import schemathesis

BASE = os.environ["KEEL_ST_BASE"]
EMAIL = os.environ["KEEL_ST_EMAIL"]
PASSWORD = os.environ["KEEL_ST_PASSWORD"]


def _login() -> str:
    body = json.dumps({"email": EMAIL, "password": PASSWORD}).encode()
    req = urllib.request.Request(
        f"{BASE}/api/v1/auth/login",
        data=body,
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"sign-in failed: {e.code} {e.read()[:300]!r}") from e
    if "access_token" not in body:
        raise RuntimeError(f"sign-in did not issue a token: {str(body)[:300]}")
    return body["access_token"]


def _valid(token: str) -> bool:
    req = urllib.request.Request(
        f"{BASE}/api/v1/auth/me", headers={"authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status == 200
    except Exception:
        return False


@schemathesis.auth()
class KeelAuth:
    token = None

    def get(self, case, context):
        if KeelAuth.token is None or not _valid(KeelAuth.token):
            try:
                KeelAuth.token = _login()
            except Exception as e:
                # Schemathesis reports only that the fetch failed; keep the reason.
                with open(os.environ.get("KEEL_ST_AUTH_LOG", "/dev/null"), "a") as log:
                    log.write(f"{e}\n")
                raise
        return KeelAuth.token

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
