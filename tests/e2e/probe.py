"""What a host of the multi-host test does, run inside its network namespace:

    python -m tests.e2e.probe get URL [CA]              one request; prints JSON
    python -m tests.e2e.probe post URL JSON [CA]        a POST, then a GET of what it made,
                                                        with the GTID cookie it set
    python -m tests.e2e.probe post-json URL JSON [TOKEN]   one POST (an admin API call, with
                                                        the admin token); prints JSON
    python -m tests.e2e.probe connect HOST PORT         prints open, refused or timeout
    python -m tests.e2e.probe loop URL SECONDS [CA]     GETs until SECONDS pass (at most
                                                        5000); prints failures and which
                                                        web server answered
    python -m tests.e2e.probe timeline URL SECONDS CA TIMEOUT   the same, each request within
                                                        TIMEOUT; prints each attempt:
                                                        [time, outcome, balancer]

Standard library only: it starts in milliseconds."""

from __future__ import annotations

import collections
import http.client
import json
import socket
import ssl
import sys
import time
from typing import Any
from urllib.parse import urlsplit


def request(
    method: str,
    url: str,
    ca: str | None,
    body: bytes | None = None,
    cookie: str | None = None,
    timeout: float = 10,
    token: str | None = None,
) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=ca)
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port or 443, context=context, timeout=timeout
        )
    else:
        connection = http.client.HTTPConnection(
            parts.hostname or "", parts.port or 80, timeout=timeout
        )
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if cookie:
        headers["Cookie"] = cookie
    if token:
        headers["Authorization"] = f"Bearer {token}"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    connection.request(method, target or "/", body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return {
        "status": response.status,
        "headers": {k.lower(): v for k, v in response.getheaders()},
        "body": data.decode("utf-8", "replace"),
    }


def connect(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=1.5):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error {exc.errno}"


def loop(url: str, seconds: float, ca: str | None) -> dict[str, Any]:
    failures: list[str] = []
    by_web: collections.Counter[str] = collections.Counter()
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline and count < 5000:
        count += 1
        try:
            answer = request("GET", url, ca)
        except OSError as exc:
            failures.append(repr(exc))
            continue
        if answer["status"] != 200:
            failures.append(f"{answer['status']} {answer['body'][:80]}")
        else:
            by_web[answer["headers"].get("x-foobar-web", "?")] += 1
    return {"count": count, "failures": failures, "by_web": by_web}


def timeline(
    url: str, seconds: float, ca: str | None, timeout: float
) -> list[tuple[float, str, str]]:
    """Every attempt with its wall-clock time (the test's clock too), so a takeover gap can
    be measured from the moment of a kill (where a short timeout retries a lost SYN early
    instead of waiting for its retransmission)."""
    attempts: list[tuple[float, str, str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(attempts) < 20000:
        try:
            answer = request("GET", url, ca, timeout=timeout)
        except OSError as exc:
            attempts.append((time.time(), type(exc).__name__, ""))
            time.sleep(0.005)
            continue
        outcome = "ok" if answer["status"] == 200 else str(answer["status"])
        attempts.append((time.time(), outcome, answer["headers"].get("x-foobar-lb", "")))
    return attempts


def main(argv: list[str]) -> None:
    command = argv[0]
    if command == "get":
        result: Any = request("GET", argv[1], argv[2] if len(argv) > 2 else None)
    elif command == "post":
        ca = argv[3] if len(argv) > 3 else None
        created = request("POST", argv[1], ca, argv[2].encode())
        cookie = created["headers"].get("set-cookie", "").split(";")[0]
        location = created["headers"].get("location", "")
        read = request("GET", argv[1].split("/api/")[0] + location, ca, cookie=cookie)
        result = {"created": created, "read": read}
    elif command == "post-json":
        token = argv[3] if len(argv) > 3 else None
        result = request("POST", argv[1], None, argv[2].encode(), token=token)
    elif command == "connect":
        result = connect(argv[1], int(argv[2]))
    elif command == "loop":
        result = loop(argv[1], float(argv[2]), argv[3] if len(argv) > 3 else None)
    elif command == "timeline":
        result = timeline(argv[1], float(argv[2]), argv[3], float(argv[4]))
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
