"""An SMTP server on loopback for crates/e2e/tests/e2e/email.rs: aiosmtpd receives, Python's
email package parses, and a small HTTP server hands the test what arrived.

    python smtp_receiver.py SMTP_PORT

prints `PORT <http port>` once both listen on 127.0.0.1. `GET /messages` -> every message
so far: `{"to", "subject", "headers": {name: value}, "text", "html"}` (the parts decoded).
"""

import json
import sys
import threading
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

lock = threading.Lock()
messages = []


class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = message_from_bytes(envelope.content, policy=policy.default)
        text = msg.get_body(preferencelist=("plain",))
        html = msg.get_body(preferencelist=("html",))
        with lock:
            messages.append(
                {
                    "to": envelope.rcpt_tos,
                    "subject": str(msg["subject"]),
                    "headers": {k: str(v) for k, v in msg.items()},
                    "text": text.get_content() if text else None,
                    "html": html.get_content() if html else None,
                }
            )
        return "250 Message accepted for delivery"


class Http(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        with lock:
            body = json.dumps(messages).encode()
        self.send_response(200 if self.path == "/messages" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


controller = Controller(Handler(), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
print(f"PORT {http.server_address[1]}", flush=True)
http.serve_forever()
