"""`llmtune rank FILE --web`: the same ranking, in a browser page served by this process.

Starlette (through FastAPI) and uvicorn serve one static page (page.html: no build step, every
text put in with `textContent`, never parsed as HTML) and a small JSON API. The server listens on
127.0.0.1 unless told otherwise and prints the page's URL with a random access token
(`secrets.token_urlsafe`); every request must carry it (the `token` query parameter, or the
`X-Llmtune-Token` header), compared in constant time, on whatever address it listens: on a shared
machine, other users can reach 127.0.0.1 too.

Every answer goes through `Candidates.answer`, as in the terminal: the same grammar, the same
atomic save under the same lock, the same refusal of a malformed ranking (its reason shown on the
page). Each answer carries the ranking the page was shown (`seen`): when another tab or person
under the same name answered the row in between, the answer is refused with 409 and the page says
so and shows the row as it is now; nothing is overwritten silently.
"""

import json
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from llmtune.data.annotators import check_annotator
from llmtune.data.rankings import RankingError, letters
from llmtune.errors import BadInput, LockHeld
from llmtune.inference.journal import signals_held
from llmtune.jobs.rank.book import Candidates, Stale, open_book
from llmtune.jobs.rank.session import prompt_text

PAGE = Path(__file__).with_name("page.html")
TOKEN_HEADER = "x-llmtune-token"


def serve(
    candidates: Path, output: Path | None, *, annotator: str | None, host: str = "127.0.0.1", port: int = 0
) -> None:
    """Serve the ranking page until Ctrl-C (or SIGTERM); every answer is saved as it is given."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise BadInput("--web needs FastAPI and uvicorn: pip install 'llmtune[web]'", key="--web") from None

    sock = _listen(host, port)  # first: a bad address leaves no lock file behind
    book, lock = open_book(candidates, output, annotator)
    try:
        token = secrets.token_urlsafe(24)
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{sock.getsockname()[1]}/?token={token}"
        print(f"rank in your browser: {url}", file=sys.stderr)
        print(
            f"saving into {book.target}; Ctrl-C stops (every answer is saved as it is given)", file=sys.stderr
        )
        sys.stderr.flush()
        config = uvicorn.Config(app_for(book, token), log_level="warning", lifespan="off", access_log=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        with signals_held():
            lock.release()
    ranked, total = book.ranked(), len(book.rows)
    print(f"{ranked} of {total} rows ranked; {total - ranked} left; saved in {book.target}", file=sys.stderr)


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise BadInput(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}", key="--host/--port"
        ) from None
    sock.listen(64)
    return sock


def app_for(book: Candidates, token: str) -> Any:
    """The page and its API over `book`; every route checks `token`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, Response

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    expected = token.encode()

    def send(data: dict[str, Any], status: int = 200) -> Response:
        # \u escapes: a lone surrogate in the data (which UTF-8 cannot encode) still goes out
        return Response(json.dumps(data), status_code=status, media_type="application/json")

    @app.middleware("http")
    async def _token_required(request: Request, call_next: Any) -> Any:
        given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
        if not secrets.compare_digest(given.encode(), expected):
            return Response(
                "access token missing or wrong: open the URL that `llmtune rank --web` printed\n",
                status_code=403,
                media_type="text/plain",
            )
        response = await call_next(request)
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self'"
        )
        return response

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/api/state")
    async def state(annotator: str = "") -> Response:
        try:
            who = _who(book, annotator)
        except ValueError as exc:
            return send({"error": str(exc)}, 400)
        return send(
            {
                "file": str(book.target),
                "rows": len(book.rows),
                "ranked": [bool(book.ranking(row, who)) for row in book.rows],
                "annotator": book.annotator,
            }
        )

    @app.get("/api/row/{n}")
    async def row(n: int, annotator: str = "") -> Response:
        if not 0 <= n < len(book.rows):
            return send({"error": f"no row {n}"}, 404)
        try:
            who, item = _who(book, annotator), book.rows[n]
        except ValueError as exc:
            return send({"error": str(exc)}, 400)
        responses = item.data["responses"]
        return send(
            {
                "n": n,
                "name": item.name,
                "line": item.line,
                "prompt": prompt_text(item.data["prompt"]),
                "responses": responses,
                "letters": letters(len(responses)),
                "ranking": book.ranking(item, who),
            }
        )

    @app.post("/api/answer")
    async def answer(request: Request) -> Response:
        try:
            body = await request.json()
            n, text, seen = int(body["n"]), str(body["ranking"]), str(body.get("seen", ""))
            who = _who(book, str(body.get("annotator", "")))
        except (ValueError, KeyError, TypeError) as exc:
            return send({"error": f"bad request: {exc}"}, 400)
        if not 0 <= n < len(book.rows):
            return send({"error": f"no row {n}"}, 404)
        try:
            saved = book.answer(book.rows[n], text, seen=seen, annotator=who)
        except RankingError as exc:
            return send({"error": f"not saved: {exc}"}, 422)
        except Stale as exc:
            return send({"error": str(exc), "ranking": book.ranking(book.rows[n], who)}, 409)
        except (BadInput, LockHeld) as exc:
            return send({"error": f"not saved: {exc}"}, 500)
        return send({"ranking": saved, "ranked": book.ranked(who), "rows": len(book.rows)})

    return app


def _who(book: Candidates, asked: str) -> str | None:
    """Whose rankings a request reads and writes: the server's --annotator when given, else the
    name the page asked for ("" = the single `ranking` field). ValueError for a bad name."""
    if book.annotator is not None:
        return book.annotator
    if not asked.strip():
        return None
    try:
        return check_annotator(asked)
    except RankingError as exc:
        raise ValueError(str(exc)) from None
