"""An example in-boundary REST API for the demo and the tests: customers, tickets, orders, products.

It accepts only the server-side API key in ``Authorization: Bearer $INVENTORY_API_KEY`` and records the
headers of every request it serves at ``GET /_seen``, so tests can prove that the gateway sends the
server-side credential and never the caller's token.

Run: ``python examples/inventory_api.py --port 8081`` (binds 127.0.0.1 only).
"""

from __future__ import annotations

import argparse
import hmac
import os
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_KEY_ENV = "INVENTORY_API_KEY"

CUSTOMERS = {
    "c-100": {"id": "c-100", "name": "Ada Lovelace", "tier": "gold", "city": "London"},
    # Contact details, so DLP on results has something to find.
    "c-200": {
        "id": "c-200",
        "name": "Grace Hopper",
        "tier": "silver",
        "city": "Arlington",
        "email": "grace@example.org",
    },
}
ORDERS = {"o-1": {"id": "o-1", "status": "shipped", "eta": "2026-12-01"}}
PRODUCTS = [{"sku": "p-1", "name": "Widget", "price": 9.5}, {"sku": "p-2", "name": "Gadget", "price": 12.0}]
SALARIES = {"e-7": {"employee": "e-7", "salary": 123456}}

seen: list[dict[str, Any]] = []


def _authorised(request: Request) -> bool:
    expected = os.environ.get(API_KEY_ENV, "")
    presented = request.headers.get("authorization", "")
    return bool(expected) and hmac.compare_digest(presented.encode(), f"Bearer {expected}".encode())


def _record(request: Request) -> None:
    seen.append(
        {
            "method": request.method,
            "path": request.url.path,
            "query": str(request.url.query),
            "headers": dict(request.headers),
        }
    )
    del seen[:-200]


async def _guarded(request: Request) -> Response | None:
    _record(request)
    if not _authorised(request):
        return JSONResponse({"error": "unauthorised"}, status_code=401)
    return None


async def customer(request: Request) -> Response:
    if (refused := await _guarded(request)) is not None:
        return refused
    found = CUSTOMERS.get(request.path_params["customer_id"])
    return JSONResponse(found) if found else JSONResponse({"error": "not found"}, status_code=404)


async def search(request: Request) -> Response:
    if (refused := await _guarded(request)) is not None:
        return refused
    query = request.query_params.get("q", "").lower()
    return JSONResponse({"results": [c for c in CUSTOMERS.values() if query in c["name"].lower()]})


async def tickets(request: Request) -> Response:
    if (refused := await _guarded(request)) is not None:
        return refused
    body = await request.json()
    return JSONResponse(
        {"ticket": "t-1", "customer": body.get("customer_id"), "summary": body.get("summary")}, status_code=201
    )


async def order_status(request: Request) -> Response:
    if (refused := await _guarded(request)) is not None:
        return refused
    found = ORDERS.get(request.path_params["order_id"])
    return JSONResponse(found) if found else JSONResponse({"error": "not found"}, status_code=404)


async def products(request: Request) -> Response:
    if (refused := await _guarded(request)) is not None:
        return refused
    return JSONResponse({"products": PRODUCTS})


async def salary(request: Request) -> Response:
    if (refused := await _guarded(request)) is not None:
        return refused
    found = SALARIES.get(request.path_params["employee_id"])
    return JSONResponse(found) if found else JSONResponse({"error": "not found"}, status_code=404)


async def echo(request: Request) -> Response:
    if (refused := await _guarded(request)) is not None:
        return refused
    return JSONResponse({"path": request.url.path, "query": dict(request.query_params)})


async def seen_requests(request: Request) -> Response:
    if request.method == "DELETE":  # a test starts from an empty record (it keeps only the last 200)
        seen.clear()
    return JSONResponse(seen)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/customers/{customer_id}", customer),
        Route("/customers", search),
        Route("/tickets", tickets, methods=["POST"]),
        Route("/orders/{order_id}/status", order_status),
        Route("/products", products),
        Route("/hr/salaries/{employee_id}", salary),
        Route("/echo/{rest:path}", echo),
        Route("/_seen", seen_requests, methods=["GET", "DELETE"]),
        Route("/health", health),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
