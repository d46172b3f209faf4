"""A Web Push service on loopback for crates/e2e/tests/e2e/push_providers.rs.

It hands out subscriptions the way a browser's push service does (an endpoint URL, the
subscription's P-256 public key and auth secret), and on each push checks the VAPID
`Authorization` (RFC 8292: an ES256 JWT for this origin, signed by the server's key `k`) and
decrypts the body with the subscription's private key (RFC 8291, `aes128gcm`), with http-ece
and cryptography: an implementation independent of the server's.

    python webpush_receiver.py VAPID_PUBLIC_KEY_B64URL

prints `PORT <n>` once listening on 127.0.0.1. Routes:
- `POST /subscriptions` -> `{"endpoint", "p256dh", "auth"}`
- `POST /push/<id>`: a push (201; 410 once the subscription is gone)
- `POST /gone/<id>`: the subscription expires (its next push gets 410)
- `GET /received/<id>` -> every push so far: `{"payload", "ttl", "topic", "urgency",
  "vapid_ok", "error"}`
"""

import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

VAPID_KEY = sys.argv[1]
MAX_BODY = 8192

lock = threading.Lock()
subscriptions = {}  # id -> {"key", "auth", "gone", "received"}


def b64d(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64e(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def check_vapid(header, origin):
    """None if the Authorization header is a valid VAPID one for `origin`, else why not."""
    if not header.startswith("vapid "):
        return "not a vapid authorization: " + header[:40]
    params = dict(p.strip().split("=", 1) for p in header[len("vapid "):].split(","))
    if params.get("k") != VAPID_KEY:
        return "k is not the server's VAPID key"
    head, claims, sig = params["t"].split(".")
    if json.loads(b64d(head)).get("alg") != "ES256":
        return "alg is not ES256"
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(params["k"]))
    raw = b64d(sig)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        public.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "bad signature"
    claims = json.loads(b64d(claims))
    now = time.time()
    if claims.get("aud") != origin:
        return f"aud {claims.get('aud')} is not {origin}"
    if not now < claims.get("exp", 0) <= now + 24 * 3600:
        return "exp is not within 24 hours"
    if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
        return "sub is not a mailto: or https: URL"
    return None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        if length > MAX_BODY:
            return self.answer(413)
        body = self.rfile.read(length)
        parts = self.path.strip("/").split("/")
        if parts == ["subscriptions"]:
            key = ec.generate_private_key(ec.SECP256R1())
            point = key.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            auth = os.urandom(16)
            with lock:
                sid = str(len(subscriptions) + 1)
                subscriptions[sid] = {"key": key, "auth": auth, "gone": False, "received": []}
            host, port = self.server.server_address
            return self.answer(
                201,
                {
                    "endpoint": f"http://{host}:{port}/push/{sid}",
                    "p256dh": b64e(point),
                    "auth": b64e(auth),
                },
            )
        if len(parts) == 2 and parts[0] == "gone":
            with lock:
                subscriptions[parts[1]]["gone"] = True
            return self.answer(204)
        if len(parts) == 2 and parts[0] == "push" and parts[1] in subscriptions:
            sub = subscriptions[parts[1]]
            host, port = self.server.server_address
            record = {
                "ttl": self.headers.get("ttl"),
                "topic": self.headers.get("topic"),
                "urgency": self.headers.get("urgency"),
                "vapid_ok": False,
                "payload": None,
                "error": None,
            }
            try:
                why = check_vapid(self.headers.get("authorization", ""), f"http://{host}:{port}")
                record["vapid_ok"] = why is None
                record["error"] = why
                if self.headers.get("content-encoding") != "aes128gcm":
                    raise ValueError("content-encoding is not aes128gcm")
                plain = http_ece.decrypt(
                    body, private_key=sub["key"], auth_secret=sub["auth"], version="aes128gcm"
                )
                record["payload"] = json.loads(plain)
            except Exception as err:  # recorded for the test to show
                record["error"] = f"{record['error'] or ''} {type(err).__name__}: {err}".strip()
            with lock:
                sub["received"].append(record)
                gone = sub["gone"]
            return self.answer(410 if gone else 201)
        return self.answer(404)

    def do_GET(self):
        parts = self.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "received" and parts[1] in subscriptions:
            with lock:
                return self.answer(200, subscriptions[parts[1]]["received"])
        return self.answer(404)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"PORT {server.server_address[1]}", flush=True)
server.serve_forever()
