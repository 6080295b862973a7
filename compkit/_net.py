"""Timeouts and bounded retries for every network call compkit makes, its own or the kaggle client's.

The kaggle client (2.2.x with kagglesdk) sends its API calls through ``requests.Session.send`` with no
timeout at all, so a server that accepts and never answers hangs it for ever; its file transfer then
retries 5 times with a 300 s read timeout, and its submission upload mounts a urllib3
``Retry(total=10, backoff_factor=0.5)`` (11 tries over about 6 minutes, silently). :func:`bounded`
replaces ``Session.send`` for the length of a call, without forking the client: every request gets
:class:`Policy`'s connect and read timeouts, the blob upload (a PUT of the same bytes to the same URL,
safe to repeat) at most ``retries`` urllib3 retries, and every other request none, because compkit
repeats whole idempotent calls itself and never repeats the one that creates a submission.

``COMPKIT_NET_TIMEOUT`` (seconds without an answer, default 60) and ``COMPKIT_NET_RETRIES`` (default 3)
set the policy. Importing this module imports neither ``requests`` nor ``kaggle``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass

from compkit.errors import CompkitError

TIMEOUT_VARIABLE = "COMPKIT_NET_TIMEOUT"
RETRIES_VARIABLE = "COMPKIT_NET_RETRIES"
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 3
MAX_CONNECT_TIMEOUT = 15.0


@dataclass(frozen=True)
class Policy:
    timeout: float  # read timeout: seconds the server may stay silent
    retries: int  # how many times an idempotent call is tried again after a network failure

    @property
    def connect_timeout(self) -> float:
        return min(self.timeout, MAX_CONNECT_TIMEOUT)

    @property
    def timeouts(self) -> tuple[float, float]:
        """``(connect, read)``, as ``requests`` takes them."""
        return (self.connect_timeout, self.timeout)

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...): 1, 2, 4 ..., at most half the timeout."""
        return min(2.0 ** (retry - 1), self.timeout / 2)

    def advice(self) -> str:
        return (
            f"on a slow connection raise {TIMEOUT_VARIABLE} (now {self.timeout:g} s) "
            f"or {RETRIES_VARIABLE} (now {self.retries})"
        )


def policy() -> Policy:
    """The policy the environment sets; a bad value is a CompkitError naming the variable."""
    timeout = _number(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT, float)
    retries = _number(RETRIES_VARIABLE, DEFAULT_RETRIES, int)
    if timeout <= 0 or retries < 0:
        raise CompkitError(
            f"{TIMEOUT_VARIABLE} must be a positive number of seconds and {RETRIES_VARIABLE} a whole number "
            f">= 0; got {timeout:g} and {retries}"
        )
    return Policy(timeout, retries)


def _number(name: str, default, kind):
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise CompkitError(f"{name}={text!r} is not a {'whole ' if kind is int else ''}number") from None


@dataclass(frozen=True)
class Failure:
    method: str
    url: str
    error: Exception


_FAILURES: contextvars.ContextVar[list[Failure] | None] = contextvars.ContextVar(
    "compkit_net_failures", default=None
)


@contextlib.contextmanager
def bounded(rules: Policy) -> Iterator[list[Failure]]:
    """Within the block every ``requests`` request follows ``rules``; yields the requests that failed.

    Re-entrant: an inner block shares the outer one's patch and list. The patch is process-wide while it
    lasts, so a request another thread sends meanwhile gets the same timeouts.
    """
    failures = _FAILURES.get()
    if failures is not None:
        yield failures
        return
    import requests
    from urllib3.util.retry import Retry

    original = requests.Session.send
    failures = []
    none = Retry(0, read=False)  # requests' own default
    upload = Retry(
        total=rules.retries,
        allowed_methods=frozenset({"PUT"}),
        status=0,
        backoff_factor=1,
        backoff_max=rules.timeout / 2,
        raise_on_status=False,
        respect_retry_after_header=False,
    )

    def send(session, request, **kwargs):
        kwargs["timeout"] = rules.timeouts
        for adapter in session.adapters.values():
            adapter.max_retries = upload if request.method == "PUT" else none
        try:
            return original(session, request, **kwargs)
        except requests.RequestException as error:
            failures.append(Failure(request.method, request.url or "", error))
            raise

    token = _FAILURES.set(failures)
    requests.Session.send = send
    try:
        yield failures
    finally:
        requests.Session.send = original
        _FAILURES.reset(token)


def tried(tries: int) -> str:
    return "tried once" if tries == 1 else f"tried {tries} times"


def transient_errors() -> tuple[type[Exception], ...]:
    """The ``requests`` errors worth another try: no connection, no answer in time, a dropped transfer."""
    import requests

    return (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def reason(error: BaseException, rules: Policy) -> str:
    """What went wrong with a request, in words, e.g. "no answer within 60 s"."""
    import urllib3

    chain = list(_chain(error))
    if any(isinstance(link, urllib3.exceptions.ConnectTimeoutError) for link in chain):
        return f"no connection within {rules.connect_timeout:g} s"
    if any(isinstance(link, (urllib3.exceptions.ReadTimeoutError, TimeoutError)) for link in chain):
        return f"no answer within {rules.timeout:g} s"
    causes = [link for link in chain if isinstance(link, OSError) and type(link).__module__ == "builtins"]
    return f"the connection failed ({type((causes or chain)[-1]).__name__})"


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it wraps: ``requests`` and urllib3 keep them in args and ``reason``."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        link = todo.pop(0)
        if not isinstance(link, BaseException) or id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        todo += [*link.args, getattr(link, "reason", None), link.__cause__, link.__context__]
