"""``/metrics`` under hostile use: invented HTTP methods never add series, and scraping as often as anyone
likes (no key needed) samples the gauges at most once per interval, without a keyspace SCAN."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.jobs_support import create

INVENTED = ["FOO", "PURGE", "BREW", "XYZZYQWERTYUIOPASDFG", "propfind"]


def _samples(client, family: str) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    text = client.get("/metrics").get_data(as_text=True)
    return [sample.labels | {"value": str(sample.value)}
            for each in text_string_to_metric_families(text) if each.name == family
            for sample in each.samples]


def test_invented_methods_are_counted_as_other(client, auth):
    for method in INVENTED:
        for path in ("/v1/jobs", "/v1/nothing-here", "/healthz"):
            assert client.open(path, method=method, headers=auth).status_code in (400, 404, 405, 501)
    methods = {sample["method"] for sample in _samples(client, "sluice_http_requests")}
    assert "other" in methods
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, methods
    durations = {sample["method"] for sample in _samples(client, "sluice_http_request_duration_seconds")}
    assert durations <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}, durations


def _scan_calls(redis_client) -> int:  # type: ignore[no-untyped-def]
    return int(redis_client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_gauges_are_sampled_at_most_once_per_interval_and_never_scan(client, auth, redis_client):
    job = create(client, auth, "gauged")
    scans = _scan_calls(redis_client)
    first = _samples(client, "sluice_runs_active")
    for _ in range(3):
        assert client.post(f"/v1/jobs/{job['id']}/trigger", json={}, headers=auth).status_code == 201
    for _ in range(20):  # a scrape storm inside one interval: the sample taken first, not recomputed
        assert _samples(client, "sluice_runs_active") == first
    assert _scan_calls(redis_client) == scans
    queued = [sample for sample in first if sample["status"] == "queued"]
    assert queued == [{"status": "queued", "value": "0.0"}]
