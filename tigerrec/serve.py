"""HTTP API for a trained run (FastAPI). Needs the ``serve`` extra: pip install 'tigerrec[serve]'.

    tigerrec serve runs/beauty --port 8000        # docs at http://127.0.0.1:8000/docs
    curl -s 127.0.0.1:8000/recommend -H 'content-type: application/json' -d '{"history": ["item3"], "k": 5}'

Every bad request gets a 4xx whose ``message`` names the problem: 422 for a body
that does not fit the schema (wrong type, k out of range, empty or over-long
history, unknown item ids), 404 for an unknown item in ``GET /items/{id}``.

Limits, each answered with the usual JSON error shape: a request body over ``max_body_bytes``
gets 413 before it is parsed; 503 with ``Retry-After`` when ``max_queue`` queries already wait;
504 when a request is not answered within ``timeout_s``. With ``api_key`` set, every route but
``/health`` needs ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (else 401). ``/health``
answers 503 (``"status": "unhealthy"``) while the batcher's worker thread is down.

The server picks up a changed run directory (e.g. ``tigerrec add-items``) without a restart:
on SIGHUP (``tigerrec serve``), or on ``POST /admin/reload`` when created with ``admin=True``
(``--admin``; needs the API key). Requests in flight finish on the old model.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real types of
# the request models, which are built inside create_app (their limits depend on the run).

import asyncio
import functools
import hmac
import json
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, NamedTuple

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, RedirectResponse
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # the core package works without the serve extra
    raise ImportError(f"tigerrec.serve needs FastAPI ({e}); install it with: pip install 'tigerrec[serve]'") from e

from .errors import TigerrecError
from .recommend import (
    MAX_QUEUE,
    BatcherClosed,
    BatcherUnavailable,
    MicroBatcher,
    Recommender,
    RequestError,
    UnknownItemError,
)

log = logging.getLogger(__name__)

MAX_HISTORY_ITEMS = 1000  # longer histories are refused (the model reads only the last max_history anyway)
MAX_ID_LENGTH = 256  # characters of an item or user id
MAX_FILTER_ITEMS = 100_000  # item ids in one request's exclude or only list
# 4 MiB: a full 100,000-id exclude list of ids up to ~38 characters (ASINs have 10), or both lists of ids up to ~17.
# The schema's worst case, 2 lists x 100,000 ids x 256 characters (~52 MB, more with escapes), is no real request.
MAX_BODY_BYTES = 4 * 2**20
TIMEOUT_S = 30.0  # a request not answered within this gets 504
INLINE_FILTER_ITEMS = 1000  # requests with longer exclude + only lists are checked off the event loop
RETRY_AFTER_S = 1  # the Retry-After of a 503

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]


class ASCIIJSONResponse(JSONResponse):
    """JSON with non-ASCII characters escaped. A request may carry lone surrogates ("\\ud800" is
    valid JSON), which UTF-8 cannot encode; echoed in an error message they would be a 500."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class Recommendation(BaseModel):
    item_id: str
    score: float = Field(
        description="log-probability of the item's Semantic ID given the history (the last code scored among the "
        "items that share the others); for a run with an item model (fusion), the fused score; for a new item in "
        "a reserved slot (reserve_new), its content similarity to the user's guided profile"
    )
    semantic_id: list[int]
    title: str | None = None
    categories: Any = None
    new: bool = Field(False, description="added after training (add-items)")


class RecommendResponse(BaseModel):
    recommendations: list[Recommendation]


class Item(BaseModel):
    model_config = ConfigDict(extra="allow")  # whatever metadata the dataset has (brand, price, ...)
    item_id: str
    semantic_id: list[int]
    title: str | None = None


class Health(BaseModel):
    status: str
    model: str = Field(description="model kind: tiger (beam search over Semantic IDs) or rpg (every item scored)")
    items: int
    max_k: int
    max_history: int
    max_history_items: int
    device: str
    run_dir: str | None
    new_items: int = Field(0, description="items added after training (tigerrec add-items)")


class Reloaded(BaseModel):
    status: str
    items: int
    new_items: int


class Serving(NamedTuple):
    """What the app serves: read both with one attribute access, swapped together on reload."""

    recommender: Recommender
    batcher: MicroBatcher


def create_app(
    source: str | Path | Recommender,
    max_history_items: int = MAX_HISTORY_ITEMS,
    max_batch: int = 64,
    admin: bool = False,
    api_key: str | None = None,
    timeout_s: float | None = TIMEOUT_S,
    max_queue: int = MAX_QUEUE,
    max_body_bytes: int = MAX_BODY_BYTES,
    workers: int = 1,
) -> FastAPI:
    """The API for a run directory (loaded once, here) or an already loaded Recommender.

    Concurrent requests share model calls (up to ``max_batch`` per call, see MicroBatcher), with
    at most ``max_queue`` queries waiting; ``workers`` batches decode side by side (on a CPU, set
    torch's threads so that workers x threads fit its cores, as ``tigerrec serve`` does with
    ``device.decode_workers``). ``app.state.reload()`` loads the run directory again and
    swaps it in; ``admin`` also serves it as ``POST /admin/reload``, which needs ``api_key``.
    ``api_key`` guards every route but ``/health``; ``timeout_s`` (None: no limit) bounds each
    request's wait; bodies over ``max_body_bytes`` are refused unread.
    """
    _check_settings(api_key, admin, timeout_s, max_queue, max_body_bytes, workers)
    recommender = source if isinstance(source, Recommender) else Recommender.load(source)
    app = FastAPI(
        title="tigerrec",
        summary="Next-item recommendations by generative retrieval with Semantic IDs (TIGER, RPG)",
        default_response_class=ASCIIJSONResponse,
        lifespan=_closing,
    )
    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)
    batcher = functools.partial(MicroBatcher, max_batch=max_batch, max_queue=max_queue, workers=workers)
    app.state.serving = Serving(recommender, batcher(recommender))
    app.state.reload = _reloader(app.state, batcher)
    _add_error_handlers(app)
    _add_routes(app, _request_model(recommender, max_history_items), max_history_items, timeout_s)
    if admin:
        _add_admin_routes(app)
    return app


def _check_settings(
    api_key: str | None, admin: bool, timeout_s: float | None, max_queue: int, max_body_bytes: int, workers: int
):
    """One-line errors for settings the service cannot run with."""
    if api_key is not None and (not api_key or not api_key.isascii() or any(c.isspace() for c in api_key)):
        raise TigerrecError("the API key must be a non-empty string of ASCII characters without spaces")
    if admin and api_key is None:
        raise TigerrecError("the admin endpoints need an API key (--api-key or TIGERREC_API_KEY)")
    if timeout_s is not None and not timeout_s > 0:
        raise TigerrecError(f"the request timeout must be > 0 seconds (or None for no limit), not {timeout_s}")
    if max_body_bytes < 1 or max_queue < 1:
        raise TigerrecError(f"max_body_bytes and max_queue must be at least 1, not {max_body_bytes} and {max_queue}")
    if workers < 1:
        raise TigerrecError(f"workers must be at least 1, not {workers}")


def _request_model(recommender: Recommender, max_history_items: int) -> type[BaseModel]:
    """The body of ``POST /recommend``, with the limits of ``recommender`` (its largest k, its item ids as the
    example)."""
    max_k = recommender.max_k

    class RecommendRequest(BaseModel):
        # strict: "5" is not a number and 1 is not true; forbid: a misspelt field is an error, not a default.
        model_config = ConfigDict(
            strict=True,
            extra="forbid",
            json_schema_extra={"examples": [{"history": recommender.item_ids[:3], "k": min(10, max_k)}]},
        )
        history: list[ItemId] = Field(
            min_length=1,
            max_length=max_history_items,
            description=f"item ids, oldest first; the model reads the last {recommender.max_history}",
        )
        user_id: Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)] | None = Field(
            None,
            description="selects the user's hashed token, as in training; omit for an anonymous user; "
            "ignored by models without a user token (the tuned default)",
        )
        k: int = Field(min(10, max_k), ge=1, le=max_k, description="number of recommendations")
        temperature: float | None = Field(
            None,
            gt=0,
            le=100,
            allow_inf_nan=False,
            description="sample the beams at this temperature (diverse results)",
        )
        exclude_seen: bool = Field(True, description="leave the history's items out of the results")
        seed: int | None = Field(None, ge=0, le=2**63 - 1, description="random seed for temperature sampling")
        max_new_share: float | None = Field(
            None,
            ge=0,
            le=1,
            allow_inf_nan=False,
            description="cap on the share of the top k for items added after training",
        )
        reserve_new: bool = Field(
            False,
            description="give the max_new_share slots to the best new items even when "
            "items the model was trained with score higher",
        )
        exclude: list[ItemId] = Field(
            [],
            max_length=MAX_FILTER_ITEMS,
            description="item ids to leave out of the results (in the basket, out of stock)",
        )
        only: list[ItemId] | None = Field(
            None, min_length=1, max_length=MAX_FILTER_ITEMS, description="recommend only among these item ids"
        )
        category: Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)] | None = Field(
            None, description="recommend only items with this category name anywhere in their categories"
        )

    return RecommendRequest


def _reloader(state, batcher):
    """``app.state.reload``: loads the run directory again and swaps it in, one reload at a time."""
    reload_lock = threading.Lock()

    def reload() -> Recommender:
        """Load the run directory again and serve it; on an error the old one stays."""
        with reload_lock:
            old = state.serving
            if old.recommender.run_dir is None:
                raise RequestError("this server was given a Recommender without a run directory; nothing to reload")
            new = Recommender.load(old.recommender.run_dir, old.recommender.device, old.recommender.requested_max_k)
            state.serving = Serving(new, batcher(new))  # one swap: both or neither
            old.batcher.close()  # answers the queries it already holds; later submits go to the new one
        log.info("reloaded %s: %d items (%d new)", new.run_dir, new.num_items, new.num_items - new.trained_items)
        return new

    return reload


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as one JSON shape, ``{"message": ..., "detail": ...}``, with the status that fits it."""

    @app.exception_handler(RequestValidationError)
    def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The default body echoes the input (possibly megabytes); keep where and what.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return ASCIIJSONResponse({"message": "; ".join(map(_describe, errors)), "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Same shape as the other errors (a body that is no JSON at all, unknown routes, ...).
        return ASCIIJSONResponse(
            {"message": str(exc.detail), "detail": exc.detail},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestError)
    def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return ASCIIJSONResponse({"message": str(exc), "detail": str(exc)}, status_code=422)

    @app.exception_handler(BatcherUnavailable)
    def unavailable(request: Request, exc: BatcherUnavailable) -> JSONResponse:
        return ASCIIJSONResponse(
            {"message": f"the server cannot take this request now ({exc}); retry", "detail": str(exc)},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(UnknownItemError)
    def unknown_item(request: Request, exc: UnknownItemError) -> JSONResponse:
        # In a request body an unknown id is invalid input (422); as a path it is a missing resource (404).
        status = 404 if request.url.path.startswith("/items/") else 422
        return ASCIIJSONResponse(
            {"message": str(exc), "detail": str(exc), "unknown_item_ids": exc.item_ids}, status_code=status
        )


def _add_routes(app: FastAPI, request_model: type[BaseModel], max_history_items: int, timeout_s: float | None):
    state = app.state

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/docs")

    @app.get("/health", response_model=Health, responses={503: {"model": Health, "description": "worker down"}})
    def health():
        current, batcher = state.serving
        # A closed batcher has just been replaced by a reload: not a failure.
        healthy = batcher.alive or batcher.closed
        body = Health(
            status="ok" if healthy else "unhealthy",
            model=current.model.kind,
            items=current.num_items,
            max_k=current.max_k,
            max_history=current.max_history,
            max_history_items=max_history_items,
            device=current.device,
            run_dir=str(current.run_dir) if current.run_dir else None,
            new_items=current.num_items - current.trained_items,
        )
        if not healthy:  # the next request starts a new worker (and logs an error)
            return ASCIIJSONResponse(body.model_dump(), status_code=503)
        return body

    async def answer(request) -> list[dict]:
        for attempt in range(2):
            current, batcher = state.serving  # one catalogue for the whole request
            # Checking is dictionary work; errors surface here, before any model time is spent.
            args = (
                request.history,
                request.user_id,
                request.k,
                request.temperature,
                request.exclude_seen,
                request.seed,
                request.exclude,
                request.only,
                request.category,
                request.max_new_share,
                request.reserve_new,
            )
            if len(request.exclude) + len(request.only or ()) > INLINE_FILTER_ITEMS:
                query = await asyncio.to_thread(current.query, *args)
            else:
                query = current.query(*args)
            try:
                future = batcher.submit(query)
            except BatcherClosed:  # a reload swapped the batcher since we read it: check against the new run
                if attempt:
                    raise
                continue
            return await asyncio.wrap_future(future)  # cancelled (skipped by the worker) if we time out

    @app.post(
        "/recommend",
        response_model=RecommendResponse,
        responses={503: {"description": "queue full, retry"}, 504: {"description": "not answered in time"}},
    )
    async def recommend(request: request_model):
        try:
            results = await asyncio.wait_for(answer(request), timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"the request was not answered within {timeout_s:g} s") from None
        return {"recommendations": results}

    @app.get("/items/{item_id:path}", response_model=Item, responses={404: {"description": "unknown item id"}})
    def item(item_id: str):
        return state.serving.recommender.item(item_id)


def _add_admin_routes(app: FastAPI) -> None:
    reload = app.state.reload

    @app.post("/admin/reload", response_model=Reloaded)
    async def admin_reload():
        try:
            new = await asyncio.to_thread(reload)
        except Exception as e:  # the old run keeps serving
            log.exception("reload failed")
            raise StarletteHTTPException(500, f"reload failed, still serving the previous run: {e}") from None
        return Reloaded(status="reloaded", items=new.num_items, new_items=new.num_items - new.trained_items)


@asynccontextmanager
async def _closing(app):
    yield
    app.state.serving.batcher.close()


class _Guard:
    """ASGI middleware in front of every route: the API key (all but /health), then the body cap,
    checked on Content-Length and counted on the bytes received (a chunked body has no length)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.api_key = api_key.encode("ascii") if api_key is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])  # lower-case names; a repeated header keeps its last value
        if self.api_key is not None and scope["path"] != "/health" and not self._authorised(headers):
            message = "missing or wrong API key (send Authorization: Bearer KEY or X-API-Key: KEY)"
            response = ASCIIJSONResponse(
                {"message": message, "detail": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
            return await response(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await self._too_large(scope, receive, send)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # handled as any HTTPException: a 413 in the usual shape
                    raise HTTPException(413, self._too_large_message)
            return message

        async def watching_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except HTTPException as e:  # raised where no exception handler saw it
            if e.status_code != 413 or started:
                raise
            await self._too_large(scope, receive, send)

    @property
    def _too_large_message(self) -> str:
        return f"the request body is larger than {self.max_body_bytes} bytes"

    async def _too_large(self, scope, receive, send):
        message = self._too_large_message
        await ASCIIJSONResponse({"message": message, "detail": message}, status_code=413)(scope, receive, send)

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        given = headers.get(b"x-api-key")
        if given is None:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            given = token.strip() if scheme.lower() == b"bearer" else b""
        return hmac.compare_digest(given, self.api_key)


def _describe(error: dict) -> str:
    """'k: Input should be less than or equal to 100' from a pydantic error."""
    if error["type"] == "json_invalid":  # loc is ("body", character offset)
        return f"the body is not valid JSON (error near character {error['loc'][-1]})"
    where = ".".join(map(str, error["loc"][1:])) or "body"
    return f"{where}: {error['msg']}"
