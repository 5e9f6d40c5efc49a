"""HTTP API for a trained run (FastAPI). Needs the ``serve`` extra: pip install 'tigerrec[serve]'.

    tigerrec serve runs/beauty --port 8000        # docs at http://127.0.0.1:8000/docs
    curl -s 127.0.0.1:8000/recommend -H 'content-type: application/json' -d '{"history": ["item3"], "k": 5}'

Every bad request gets a 4xx whose ``message`` names the problem: 422 for a body
that does not fit the schema (wrong type, k out of range, empty or over-long
history, unknown item ids), 404 for an unknown item in ``GET /items/{id}``.

The server picks up a changed run directory (e.g. ``tigerrec add-items``) without a restart:
on SIGHUP (``tigerrec serve``), or on ``POST /admin/reload`` when created with ``admin=True``
(``--admin``; loopback clients only). Requests in flight finish on the old model.
"""

# No ``from __future__ import annotations`` here: FastAPI must see the real types of
# the request models, which are built inside create_app (their limits depend on the run).

import asyncio
import ipaddress
import json
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, RedirectResponse
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # the core package works without the serve extra
    raise ImportError(f"tigerrec.serve needs FastAPI ({e}); install it with: pip install 'tigerrec[serve]'") from e

from .recommend import MicroBatcher, Recommender, RequestError, UnknownItemError

log = logging.getLogger(__name__)

MAX_HISTORY_ITEMS = 1000  # longer histories are refused (the model reads only the last max_history anyway)
MAX_ID_LENGTH = 256  # characters of an item or user id
MAX_FILTER_ITEMS = 100_000  # item ids in one request's exclude or only list

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]


class ASCIIJSONResponse(JSONResponse):
    """JSON with non-ASCII characters escaped. A request may carry lone surrogates ("\\ud800" is
    valid JSON), which UTF-8 cannot encode; echoed in an error message they would be a 500."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class Recommendation(BaseModel):
    item_id: str
    score: float = Field(description="log-probability of the item's Semantic ID given the history")
    semantic_id: list[int]
    title: str | None = None
    categories: Any = None


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


def create_app(
    source: str | Path | Recommender,
    max_history_items: int = MAX_HISTORY_ITEMS,
    max_batch: int = 64,
    admin: bool = False,
) -> FastAPI:
    """The API for a run directory (loaded once, here) or an already loaded Recommender.

    Concurrent requests share model calls (up to ``max_batch`` per call, see MicroBatcher).
    ``app.state.reload()`` loads the run directory again and swaps it in; ``admin`` also
    serves it as ``POST /admin/reload`` to loopback clients.
    """
    recommender = source if isinstance(source, Recommender) else Recommender.load(source)
    app = FastAPI(
        title="tigerrec",
        summary="Next-item recommendations by generative retrieval with Semantic IDs (TIGER, RPG)",
        default_response_class=ASCIIJSONResponse,
        lifespan=_closing,
    )
    app.state.recommender, app.state.batcher = recommender, MicroBatcher(recommender, max_batch)
    app.state.reload = _reloader(app.state, max_batch)
    _add_error_handlers(app)
    _add_routes(app, _request_model(recommender, max_history_items), recommender.max_k, max_history_items)
    if admin:
        _add_admin_routes(app)
    return app


def _request_model(recommender: Recommender, max_history_items: int) -> type[BaseModel]:
    """The body of ``POST /recommend``, with the limits of ``recommender`` (its largest k, its item ids as
    the example)."""
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


def _reloader(state, max_batch: int):
    """``app.state.reload``: loads the run directory again and swaps it in, one reload at a time."""
    reload_lock = threading.Lock()

    def reload() -> Recommender:
        """Load the run directory again and serve it; on an error the old one stays."""
        with reload_lock:
            old = state.recommender
            if old.run_dir is None:
                raise RequestError("this server was given a Recommender without a run directory; nothing to reload")
            new = Recommender.load(old.run_dir, old.device, old.requested_max_k)
            old_batcher = state.batcher
            state.recommender, state.batcher = new, MicroBatcher(new, max_batch)
            old_batcher.close()  # after the queries it already holds
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

    @app.exception_handler(UnknownItemError)
    def unknown_item(request: Request, exc: UnknownItemError) -> JSONResponse:
        # In a request body an unknown id is invalid input (422); as a path it is a missing resource (404).
        status = 404 if request.url.path.startswith("/items/") else 422
        return ASCIIJSONResponse(
            {"message": str(exc), "detail": str(exc), "unknown_item_ids": exc.item_ids}, status_code=status
        )


def _add_routes(app: FastAPI, request_model: type[BaseModel], max_k: int, max_history_items: int) -> None:
    state = app.state

    @app.get("/", include_in_schema=False)
    def root():
        return RedirectResponse("/docs")

    @app.get("/health", response_model=Health)
    def health():
        current = state.recommender
        return Health(
            status="ok",
            model=current.model.kind,
            items=current.num_items,
            max_k=max_k,
            max_history=current.max_history,
            max_history_items=max_history_items,
            device=current.device,
            run_dir=str(current.run_dir) if current.run_dir else None,
            new_items=current.num_items - current.trained_items,
        )

    @app.post("/recommend", response_model=RecommendResponse)
    async def recommend(request: request_model):
        current, batcher = state.recommender, state.batcher  # one catalogue for the whole request
        # Checking is cheap dictionary work; errors surface here, before any model time is spent.
        query = current.query(
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
        results = await asyncio.wrap_future(batcher.submit(query))
        return {"recommendations": results}

    @app.get("/items/{item_id:path}", response_model=Item, responses={404: {"description": "unknown item id"}})
    def item(item_id: str):
        return state.recommender.item(item_id)


def _add_admin_routes(app: FastAPI) -> None:
    reload = app.state.reload

    @app.post("/admin/reload", response_model=Reloaded, responses={403: {"description": "not a loopback client"}})
    async def admin_reload(request: Request):
        if not _is_loopback(request.client.host if request.client else ""):
            raise StarletteHTTPException(403, "the admin endpoints answer loopback clients only")
        try:
            new = await asyncio.to_thread(reload)
        except Exception as e:  # the old run keeps serving
            log.exception("reload failed")
            raise StarletteHTTPException(500, f"reload failed, still serving the previous run: {e}") from None
        return Reloaded(status="reloaded", items=new.num_items, new_items=new.num_items - new.trained_items)


@asynccontextmanager
async def _closing(app):
    yield
    app.state.batcher.close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # not an address (a proxy's name, a test client's)
        return False


def _describe(error: dict) -> str:
    """'k: Input should be less than or equal to 100' from a pydantic error."""
    if error["type"] == "json_invalid":  # loc is ("body", character offset)
        return f"the body is not valid JSON (error near character {error['loc'][-1]})"
    where = ".".join(map(str, error["loc"][1:])) or "body"
    return f"{where}: {error['msg']}"
