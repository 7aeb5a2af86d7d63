"""What the server's edge learned about one request, kept as one frozen object in its scope.

The edge (server/edge.py) makes it with the request id; the body limit (server/middleware.py)
and authentication (server/auth.py) each replace it with a copy that adds what they found, so
nothing downstream sees a half-made request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from litestar.types import Scope

# The one key of Foreman's in the ASGI scope's per-request "state".
CONTEXT_KEY = "foreman"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the organisation, a loggable fingerprint of the key, how it was checked."""

    org_id: str
    fingerprint: str
    registered: bool  # True when the key was found, unrevoked, in the key table


class RequestContext(NamedTuple):
    """A request's id, its caller once authenticated, and its body once received.

    Immutable like the frozen dataclasses elsewhere, but a NamedTuple: two or three are built per
    request, and a frozen dataclass's __init__ (an object.__setattr__ per field) costs 3.5 times
    as much (1.4 against 0.4 µs).
    """

    request_id: bytes  # printable ASCII: echoed in x-request-id and written to the log
    caller: Caller | None = None
    body: bytes | None = None  # None: BodyLimitMiddleware did not read it (no body method)
    body_error: Exception | None = None  # raised when the app reads the body (after auth)

    def with_caller(self, caller: Caller) -> RequestContext:
        """This context with the authenticated caller."""
        return RequestContext(self.request_id, caller, self.body, self.body_error)

    def with_body(self, body: bytes, error: Exception | None) -> RequestContext:
        """This context with the received body (and the refusal to raise on reading it)."""
        return RequestContext(self.request_id, self.caller, body, error)


def context_of(scope: Scope) -> RequestContext:
    """The request's context (the edge makes one for every HTTP request)."""
    context: RequestContext = scope["state"][CONTEXT_KEY]
    return context
