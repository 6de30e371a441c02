"""The worklist's reading columns and filters, and its ETag (304 while a page is unchanged)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

MakeStudy = Callable[..., str]


def test_rows_show_reading_state_and_filter_on_it(
    client: TestClient, make_study: MakeStudy, reader_a: dict[str, str]
) -> None:
    free, claimed, reported = make_study(minutes=1), make_study(minutes=2), make_study(minutes=3)
    client.post(f"/api/v1/studies/{claimed}/claim", headers=reader_a)
    client.post(f"/api/v1/studies/{reported}/claim", headers=reader_a)
    client.post(f"/api/v1/studies/{reported}/report", headers=reader_a)

    def uids(**params: object) -> list[str]:
        response = client.get("/api/v1/worklist", params=params, headers=reader_a)
        assert response.status_code == 200, response.json()
        return [row["study_instance_uid"] for row in response.json()["items"]]

    rows = {row["study_instance_uid"]: row for row in client.get("/api/v1/worklist", headers=reader_a).json()["items"]}
    assert rows[claimed]["claimed_by"] == "reader-a" and rows[claimed]["reported_at"] is None
    assert rows[reported]["claimed_by"] is None and rows[reported]["reported_at"].endswith("Z")
    assert rows[free]["series_count"] == 1 and rows[free]["instance_count"] == 0
    assert uids(claimed="true") == [claimed]
    assert uids(claimed="false") == [free, reported]
    assert uids(reported="true") == [reported]
    assert uids(reported="false", claimed="false") == [free]
    response = client.get("/api/v1/worklist", params={"claimed": "maybe"}, headers=reader_a)
    assert response.status_code == 422


def test_worklist_etag_answers_304_until_the_page_changes(
    client: TestClient, make_study: MakeStudy, reader_a: dict[str, str]
) -> None:
    uid = make_study()
    first = client.get("/api/v1/worklist", headers=reader_a)
    etag = first.headers["etag"]
    assert first.status_code == 200 and etag.startswith('"') and first.json()["items"]
    assert first.headers["cache-control"] == "private, no-cache"
    same = client.get("/api/v1/worklist", headers={**reader_a, "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == etag
    listed = client.get("/api/v1/worklist", headers={**reader_a, "If-None-Match": f'"other", W/{etag}'})
    assert listed.status_code == 304
    assert client.get("/api/v1/worklist", headers={**reader_a, "If-None-Match": '"stale"'}).status_code == 200
    client.post(f"/api/v1/studies/{uid}/claim", headers=reader_a)
    changed = client.get("/api/v1/worklist", headers={**reader_a, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert changed.json()["items"][0]["claimed_by"] == "reader-a"
    other_page = client.get("/api/v1/worklist", params={"limit": 1}, headers={**reader_a, "If-None-Match": "*"})
    assert other_page.status_code == 304
