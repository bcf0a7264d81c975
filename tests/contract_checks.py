"""Schemathesis checks of our own, loaded with SCHEMATHESIS_HOOKS=contract_checks by tests/test_contract.py
(``--checks all`` runs them beside the built-in ones): the API's promises about errors."""

import json

import schemathesis

# what a body must never carry: a traceback, Ray's actor and process names, paths into the installation,
# terminal colour codes
INTERNALS = ("Traceback", "ray::", "site-packages", "\x1b[", "\\u001b[", "actor_id=", 'File "/', "pid=", "ServeReplica")


@schemathesis.check
def no_internals_in_responses(ctx, response, case):
    """No response body names the server's internals (the detail belongs in the server log)."""
    body = response.text or ""
    found = [m for m in INTERNALS if m in body]
    if found:
        raise AssertionError(f"the response body carries the server's internals ({', '.join(map(repr, found))}): {body[:300]!r}")


@schemathesis.check
def errors_have_one_shape(ctx, response, case):
    """Every 4xx/5xx is JSON {"error": {"code": str, "message": str, "fields": [...]}}."""
    if response.status_code < 400:
        return
    try:
        error = json.loads(response.text)["error"]
        ok = isinstance(error["code"], str) and isinstance(error["message"], str) and isinstance(error["fields"], list)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise AssertionError(f"{response.status_code} without the API's error body: {(response.text or '')[:300]!r}")


@schemathesis.check
def unavailable_says_when_to_retry(ctx, response, case):
    """A 503 or 429 says when to come back (Retry-After)."""
    if response.status_code in (429, 503) and "retry-after" not in {k.lower() for k in response.headers}:
        raise AssertionError(f"{response.status_code} without Retry-After")
