"""One error envelope for every failure the gateway answers: ``{"error": {type, code, message, param}}``.

``param`` names the offending field in the request's own terms (``references[2].image``, ``size``,
``n``), so a client can point at it. FastAPI's request-validation errors (normally 422 with a list of
``loc`` tuples) are rewritten to 400 in the same envelope, so a client parses exactly one shape.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.schemas import ErrorBody, ErrorEnvelope

__all__ = ["APIError", "BodyTooLarge", "envelope", "param_from_loc", "install_error_handlers", "ERROR_RESPONSES"]

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "service_unavailable", 504: "timeout_error"}


class APIError(Exception):
    """An error answered to the client as-is: HTTP status, machine code, words, offending field."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None, type_: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = headers or {}
        self.type = type_ or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> ErrorBody:
        return ErrorBody(type=self.type, code=self.code, message=self.message, param=self.param)


class BodyTooLarge(StarletteHTTPException):
    """Raised from the gateway's ``receive`` when the bytes received pass the body limit. An
    HTTPException so FastAPI's body parsing re-raises it instead of turning it into a 400."""

    def __init__(self, error: APIError):
        super().__init__(status_code=error.status, detail=error.message, headers=error.headers)
        self.error = error


def envelope(err: APIError) -> JSONResponse:
    return JSONResponse(ErrorEnvelope(error=err.body()).model_dump(), status_code=err.status, headers=err.headers)


def param_from_loc(loc: tuple | list) -> str | None:
    """("body", "references", 2, "image") -> "references[2].image"; the body itself -> "body"."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "form", "cookie"):
        where, parts = parts[0], parts[1:]
        if not parts:
            return where
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or None


def _validation_error(exc: RequestValidationError) -> APIError:
    errs = exc.errors()
    if not errs:
        return APIError(400, "invalid_request", "invalid request")
    first = errs[0]
    param = param_from_loc(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        param = "body"
    words = []
    for e in errs[:5]:
        p = param_from_loc(e.get("loc", ()))
        msg = str(e.get("msg", "invalid value"))
        words.append(f"{p}: {msg}" if p else msg)
    more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
    code = str(first.get("type") or "invalid_value")
    return APIError(400, code, "; ".join(words) + more, param)


def install_error_handlers(app: FastAPI) -> None:
    """Every exception path of `app` answers the envelope (validation 400, HTTP errors, 500)."""

    @app.exception_handler(APIError)
    async def _api_error(_req: Request, exc: APIError):
        return envelope(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError):
        return envelope(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        if isinstance(exc, BodyTooLarge):
            return envelope(exc.error)
        if exc.status_code == 400 and (err := _body_error(exc)) is not None:
            return envelope(err)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return envelope(APIError(exc.status_code, code, str(exc.detail), None, headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception):
        log.exception("unhandled gateway error")  # the class and the traceback go to the log, not the client
        return envelope(APIError(500, "internal_error", "internal error; the gateway log has the details", None,
                                 type_="server_error"))


def _body_error(exc: StarletteHTTPException) -> APIError | None:
    """FastAPI/Starlette answer an unparsable body with a bare 400 ("There was an error parsing the
    body", the parser's error as ``__cause__``) or the multipart parser's words: name the field
    (``body``) and the cause in this envelope instead."""
    cause, detail = exc.__cause__, str(exc.detail)
    if isinstance(cause, UnicodeDecodeError):
        return APIError(400, "invalid_utf8", f"the request body is not valid UTF-8 (invalid byte at offset {cause.start})",
                        "body")
    if isinstance(cause, RecursionError):
        return APIError(400, "json_too_deep", "the request body's JSON is nested too deeply", "body")
    if "boundary" in detail.lower():
        return APIError(400, "invalid_multipart", "multipart/form-data without a boundary: the Content-Type header "
                        "needs boundary=...", "body")
    if "multipart" in detail.lower():
        return APIError(400, "invalid_multipart", "malformed multipart/form-data body", "body")
    if detail == "There was an error parsing the body":
        return APIError(400, "invalid_body", "the request body could not be parsed", "body")
    return None


ERROR_RESPONSES = {s: {"model": ErrorEnvelope, "description": d} for s, d in (
    (400, "Invalid request; `param` names the field"), (401, "Missing or wrong API key"),
    (413, "Request body too large"), (429, "Queue full; see Retry-After"),
    (503, "No model ready; see Retry-After"), (504, "Generation timed out"))}
