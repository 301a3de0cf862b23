"""A stand-in SMS/IVR provider for local runs and tests (`serviceloop provider`).

It speaks the provider API the callback channel adapter uses (services/callback/channel.py),
records what it was asked to send, and lets a person or a test answer for the customer:

    POST /messages                {"to", "text", "reference", "callback_url"} → {"message_id"}
                                  (the same Idempotency-Key gives the same message, sent once)
    GET  /messages                every message sent, oldest first
    GET  /requests                every send request received, a repeated key included
    POST /messages/<id>/reply     {"reply": "1"} → posts {"message_id", "reply"} to the
                                  message's callback_url and answers with what that said
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests


class StandInProvider:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, token: str = "stand-in-token",
                 *, delay: float = 0.0):
        self.token = token
        self.delay = delay  # seconds a send takes, as a real provider's does
        self.unavailable = False  # a test sets it: every send is answered 503
        self.messages: list[dict] = []
        self.requests: list[dict] = []
        self._by_key: dict[str, dict] = {}
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/") == "/messages":
                    self._answer(200, provider.sent())
                elif self.path.rstrip("/") == "/requests":
                    self._answer(200, provider.received())
                else:
                    self._answer(404, {"error": "no such path"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._answer(400, {"error": "not JSON"})
                    return
                parts = self.path.strip("/").split("/")
                if parts == ["messages"]:
                    if self.headers.get("Authorization") != f"Bearer {provider.token}":
                        self._answer(401, {"error": "bad token"})
                        return
                    status, answer = provider.accept(body, self.headers.get("Idempotency-Key"))
                    self._answer(status, answer)
                elif len(parts) == 3 and parts[0] == "messages" and parts[2] == "reply":
                    self._answer(*provider.reply(parts[1], str(body.get("reply", ""))))
                else:
                    self._answer(404, {"error": "no such path"})

            def _answer(self, status: int, body: object) -> None:
                data = json.dumps(body, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"

    def accept(self, body: dict, key: str | None) -> tuple[int, dict]:
        with self._lock:
            self.requests.append({"idempotency_key": key, "reference": body.get("reference"),
                                  "to": body.get("to")})
        if self.unavailable:
            return 503, {"error": "down for maintenance"}
        missing = [f for f in ("to", "text", "callback_url") if not body.get(f)]
        if missing:
            return 422, {"error": f"missing {', '.join(missing)}"}
        time.sleep(self.delay)
        with self._lock:
            if key and key in self._by_key:
                return 200, {"message_id": self._by_key[key]["message_id"]}
            message = {"message_id": uuid.uuid4().hex, "to": body["to"], "text": body["text"],
                       "reference": body.get("reference"), "callback_url": body["callback_url"],
                       "replies": []}
            self.messages.append(message)
            if key:
                self._by_key[key] = message
        return 201, {"message_id": message["message_id"]}

    def sent(self) -> list[dict]:
        with self._lock:
            return [dict(m) for m in self.messages]

    def received(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self.requests]

    def reply(self, message_id: str, reply: str) -> tuple[int, dict]:
        """The customer answers a message: the reply is posted to its callback URL."""
        with self._lock:
            message = next((m for m in self.messages if m["message_id"] == message_id), None)
        if message is None:
            return 404, {"error": f"no message {message_id}"}
        message["replies"].append(reply)
        answer = requests.post(message["callback_url"], timeout=10,
                               json={"message_id": message_id, "reply": reply},
                               headers={"X-Provider-Token": self.token})
        try:
            body = answer.json()
        except ValueError:
            body = {"raw": answer.text[:500]}
        return answer.status_code, {"callback_status": answer.status_code, "callback": body}

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def start(self) -> StandInProvider:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
