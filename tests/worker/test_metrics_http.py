"""The API counts requests by route template (never the raw path) and times them by route."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.access_log import UNMATCHED_ROUTE


def _count(method: str, route: str, status: str) -> float:
    labels = {"method": method, "route": route, "status": status}
    return REGISTRY.get_sample_value("sightline_http_requests_total", labels) or 0.0


def _latency_count(method: str, route: str) -> float:
    labels = {"method": method, "route": route}
    return REGISTRY.get_sample_value("sightline_http_request_seconds_count", labels) or 0.0


def test_requests_are_counted_by_route_template(client: TestClient) -> None:
    route = "/api/v1/studies/{study_uid}"
    before, timed = _count("GET", route, "401"), _latency_count("GET", route)
    for uid in ("1.2.3", "1.2.4", "9.9.9.9"):
        assert client.get(f"/api/v1/studies/{uid}").status_code == 401
    assert _count("GET", route, "401") == before + 3
    assert _latency_count("GET", route) == timed + 3
    assert (
        REGISTRY.get_sample_value(
            "sightline_http_requests_total", {"method": "GET", "route": "/api/v1/studies/1.2.3", "status": "401"}
        )
        is None
    )


def test_unknown_paths_and_methods_share_one_series(client: TestClient) -> None:
    before = _count("GET", UNMATCHED_ROUTE, "404")
    client.get("/no/such/page/123")
    client.get("/wp-admin/setup.php")
    assert _count("GET", UNMATCHED_ROUTE, "404") == before + 2
    other = _count("OTHER", "/healthz", "405")
    client.request("PROPFIND", "/healthz")
    assert _count("OTHER", "/healthz", "405") == other + 1


def test_metrics_endpoint_exports_the_http_series(client: TestClient) -> None:
    client.get("/healthz")
    body = client.get("/metrics").text
    assert 'sightline_http_requests_total{method="GET",route="/healthz",status="200"}' in body
    assert 'sightline_http_request_seconds_bucket{le="0.005",method="GET",route="/healthz"}' in body
