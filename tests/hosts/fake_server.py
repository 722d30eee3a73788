"""An HTTP server on 127.0.0.1 that the fake Git host APIs are built on.

Runs `http.server` in a thread on a free port, checks the Authorization header, records every
request, injects faults (an error answer or a stall for the next N matching requests) and
dispatches to the routes a fake registers. With a `fake_git.GitRemote` attached it also serves
that repository to git over smart HTTP (Basic authentication with a token as the password). The
fakes hold the API shapes; this holds the plumbing.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

if TYPE_CHECKING:
    from .fake_git import GitRemote


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def arg(self, name: str) -> Any:
        """A parameter from the JSON body or else the query string (GitLab reads both)."""
        body = self.json()
        if isinstance(body, dict) and name in body:
            return body[name]
        return self.param(name)


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request, re.Match[str]], Reply]


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    reply: Reply | None
    stall: float
    times: int


class FakeServer:
    """Routes, auth, faults and a request log; subclasses register the API's routes."""

    auth_schemes: tuple[str, ...] = ("Bearer", "token")

    def __init__(self, *, tokens: set[str]) -> None:
        self.tokens = tokens
        self.logins: dict[str, str] = {}
        """Who each token belongs to (merges record it); unnamed tokens are the bot's."""
        self.git: GitRemote | None = None
        """A repository served over smart HTTP and merged into for real, when a test sets one."""
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []
        """Exceptions raised by the fake's own handlers (answered 500); a test bug if any."""
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _RequestHandler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self._routes.append((method, re.compile(pattern), handler))

    def fail(
        self,
        method: str,
        pattern: str,
        status: int,
        *,
        body: Any = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests matching with this error instead of the route."""
        reply = Reply(status, body, headers or {})
        self._faults.append(Fault(method, re.compile(pattern), reply, 0.0, times))

    def stall(self, method: str, pattern: str, seconds: float, *, times: int = 1) -> None:
        """Hold the next `times` matching requests for `seconds` before answering normally."""
        self._faults.append(Fault(method, re.compile(pattern), None, seconds, times))

    def unauthorized(self) -> Reply:
        return Reply(401, {"message": "Bad credentials"})

    def login(self, request: Request) -> str:
        """The account behind the request's token (the bot unless `logins` names another)."""
        token = request.headers.get("authorization", "").partition(" ")[2]
        token = request.headers.get("private-token", token)
        return self.logins.get(token, "gitops-rollout-bot")

    def refresh(self) -> None:
        """Called under the lock before each API request: bring stored state up to date (a
        fake backed by a real repository follows its branches here)."""

    def _serve_git(self, request: Request) -> Reply:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        try:
            user, _, token = base64.b64decode(credentials).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, token = "", ""
        if scheme.lower() != "basic" or token not in self.tokens:
            return Reply(401, b"", {"WWW-Authenticate": 'Basic realm="fake"'})
        assert self.git is not None
        return self.git.serve(request, user=self.logins.get(token, user))

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme in self.auth_schemes and token in self.tokens

    def page(
        self, request: Request, items: list[Any], *, size_param: str, default_size: int
    ) -> tuple[list[Any], int, int]:
        """The requested page of `items`: (page items, page number, page count)."""
        size = int(request.param(size_param) or default_size)
        number = int(request.param("page") or 1)
        count = max(1, -(-len(items) // size))
        return items[(number - 1) * size : number * size], number, count

    def page_link(self, request: Request, number: int) -> str:
        query = {key: values[0] for key, values in request.query.items()}
        query["page"] = str(number)
        return f"{self.url}{request.path}?{urlencode(query)}"

    def link_header(self, request: Request, number: int, count: int) -> str:
        links = []
        if number < count:
            links.append(f'<{self.page_link(request, number + 1)}>; rel="next"')
            links.append(f'<{self.page_link(request, count)}>; rel="last"')
        if number > 1:
            links.append(f'<{self.page_link(request, number - 1)}>; rel="prev"')
            links.append(f'<{self.page_link(request, 1)}>; rel="first"')
        return ", ".join(links)

    def dispatch(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            fault = next(
                (
                    f
                    for f in self._faults
                    if f.times > 0 and f.method == request.method and f.pattern.search(request.path)
                ),
                None,
            )
            if fault is not None:
                fault.times -= 1
        if fault is not None:
            if fault.reply is not None:
                return fault.reply
            time.sleep(fault.stall)
        if self.git is not None and self.git.serves(request.path):
            with self._lock:
                return self._serve_git(request)
        if not self.authorized(request):
            return self.unauthorized()
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(request.path)
            if method == request.method and match:
                with self._lock:
                    try:
                        self.refresh()
                        return handler(request, match)
                    except Exception as err:
                        self.errors.append(err)
                        return Reply(500, {"message": f"fake failed: {err!r}"})
        return Reply(404, {"message": "Not Found"})


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _handle(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={key.lower(): value for key, value in self.headers.items()},
            body=self._body(),
        )
        reply = fake.dispatch(request)
        if reply.body is None:
            payload = b""
        elif isinstance(reply.body, bytes):
            payload = reply.body
        else:
            payload = json.dumps(reply.body).encode()
        try:
            self.send_response(reply.status)
            if payload and not any(k.lower() == "content-type" for k in reply.headers):
                self.send_header("Content-Type", "application/json; charset=utf-8")
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (a timeout test); nothing to answer.
            self.close_connection = True

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""
        # git sends large packs in chunks.
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass
