"""A stand-in OpenAI-compatible chat server for the caption-upsampling tests: a real http.server on a thread.

It answers ``POST .../chat/completions`` as llama.cpp's server, Ollama or LM Studio do, streaming (server-sent
events, ``data: [DONE]`` at the end) when the request asks for it and plain JSON otherwise. Knobs, set on the
instance between requests:

    reply           the assistant's text, or a function(request body) -> text
    status, error   answer with this HTTP status and body (bytes, or a dict sent as JSON)
    delay           seconds before the response starts (a slow or hung server)
    chunk_delay     seconds between streamed pieces; chunks: how many pieces the reply is cut into
    endless         keep streaming the reply over and over, never sending [DONE]
    malformed       b"..." sent as the body (or, streaming, as one event's data) instead of a completion
    stream_error    a dict sent as one streamed event ({"error": {...}}) after the first piece
    ignore_stream   answer plain JSON even when the request asks for a stream
    hang_up         close the connection without answering
    finish_reason   written in the last choice ("stop" unless set)

Every request is recorded in `requests` as {"path", "headers", "body"}.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Union


class OpenAIServer:
    def __init__(self):
        self.reply: Union[str, Callable[[dict], str]] = "A red cube sits on a grey table."
        self.status = 200
        self.error: Union[bytes, dict, None] = None
        self.delay = 0.0
        self.chunk_delay = 0.0
        self.chunks = 4
        self.endless = False
        self.malformed: Optional[bytes] = None
        self.stream_error: Optional[dict] = None
        self.ignore_stream = False
        self.hang_up = False
        self.finish_reason = "stop"
        self.requests: list[dict[str, Any]] = []
        self.stop_event = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                server._answer(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()  # ends sleeping handlers
        self.httpd.shutdown()
        self.httpd.server_close()
        return False

    # --- answering ---

    def _sleep(self, seconds: float) -> bool:
        """False when the server is shutting down."""
        return not self.stop_event.wait(seconds) if seconds > 0 else True

    def _text(self, body) -> str:
        return self.reply(body) if callable(self.reply) else self.reply

    def _answer(self, handler: BaseHTTPRequestHandler, body) -> None:
        if not self._sleep(self.delay):
            return
        if self.hang_up:
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        if self.status != 200 or self.error is not None:
            error = self.error if self.error is not None else {"error": {"message": "failed", "type": "server_error"}}
            data = error if isinstance(error, bytes) else json.dumps(error).encode()
            self._send(handler, self.status, "application/json", data)
            return
        wants_stream = bool(isinstance(body, dict) and body.get("stream")) and not self.ignore_stream
        if not wants_stream:
            if self.malformed is not None:
                self._send(handler, 200, "application/json", self.malformed)
                return
            completion = {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": (body or {}).get("model", "stand-in"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self._text(body)},
                        "finish_reason": self.finish_reason,
                    }
                ],
            }
            self._send(handler, 200, "application/json", json.dumps(completion).encode())
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        try:
            self._stream(handler, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading

    def _stream(self, handler, body) -> None:
        def event(data: str) -> None:
            handler.wfile.write(f"data: {data}\n\n".encode())
            handler.wfile.flush()

        def chunk(content=None, finish=None, role=None) -> str:
            delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
            return json.dumps(
                {
                    "id": "chatcmpl-test",
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
            )

        handler.wfile.write(b": keep-alive\n\n")
        event(chunk(role="assistant", content=""))
        if self.malformed is not None:
            event(self.malformed.decode())
            return
        text = self._text(body)
        size = max(1, -(-len(text) // max(1, self.chunks)))
        pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
        sent = 0
        while True:
            for piece in pieces:
                if not self._sleep(self.chunk_delay):
                    return
                event(chunk(content=piece))
                sent += 1
                if self.stream_error is not None and sent == 1:
                    event(json.dumps(self.stream_error))
                    return
            if not self.endless:
                break
        event(chunk(finish=self.finish_reason))
        event("[DONE]")

    @staticmethod
    def _send(handler, status: int, content_type: str, data: bytes) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
