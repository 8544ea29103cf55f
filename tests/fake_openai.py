"""A local OpenAI-compatible chat-completions server (http.server) for the tests of the endpoint clients: records
each request (path, Authorization header, body), answers with a chat completion, or with the statuses or raw bodies a
test queues. The `endpoint` fixture (tests/conftest.py) starts it and gives its /v1 URL."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler


class FakeOpenAI(BaseHTTPRequestHandler):
    requests: list[dict] = []
    status = 200
    statuses: list[int] = []  # answered first, one per request, before `status`
    raw: bytes | None = None  # a 200 reply's body instead of a chat completion
    error_body: bytes | None = None  # an error reply's body instead of the default one
    # the reply's content from (request body, Authorization header); None: the synth test's canned replies
    reply: Callable[[dict, str | None], str] | None = None

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeOpenAI.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body,
                                    "content_type": self.headers.get("Content-Type"),
                                    "accept": self.headers.get("Accept"), "method": self.command})
        status = FakeOpenAI.statuses.pop(0) if FakeOpenAI.statuses else FakeOpenAI.status
        if status != 200:
            self.send_response(status)
            self.end_headers()
            if FakeOpenAI.error_body is not None:
                self.wfile.write(FakeOpenAI.error_body)
                return
            self.wfile.write(b'{"error": {"message": "bad key ' + (self.headers.get("Authorization") or "").encode()
                             + b'"},\n  "code": ' + str(status).encode() + b'}' + b" " * 400 + b"TAIL")
            return
        if FakeOpenAI.raw is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(FakeOpenAI.raw)))
            self.end_headers()
            self.wfile.write(FakeOpenAI.raw)
            return
        user = body["messages"][-1]["content"]
        if FakeOpenAI.reply is not None:
            content = FakeOpenAI.reply(body, self.headers.get("Authorization"))
        elif "Question:" not in user:
            content = "1. Which drug lowers cholesterol?\n2. Which drug lowers cholesterol?\n- Why are statins used?"
        elif "Why" in user:  # a server that echoes the credentials it got must not leak them into the output
            content = f"Statins lower cholesterol ({self.headers.get('Authorization')})."
        else:
            content = "Statins."
        payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                "finish_reason": "stop"}]}
        raw = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass
