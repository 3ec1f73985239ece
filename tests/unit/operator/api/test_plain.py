"""Plain API objects and JSON read without trusting their shape (api/plain.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from kubetune_operator.api.plain import mapping, mappings, parse_time


def test_a_json_list_keeps_only_its_objects() -> None:
    assert mappings([{"a": 1}, 2, "x", None, {"b": 2}]) == [{"a": 1}, {"b": 2}]
    assert mappings({"a": 1}) == []
    assert mapping([1]) == {}
    assert mapping({"a": 1}) == {"a": 1}


def test_a_kubernetes_timestamp_reads_with_its_zone() -> None:
    assert parse_time("2026-12-07T18:00:00Z") == datetime(2026, 12, 7, 18, tzinfo=UTC)
    assert parse_time("2026-12-07T19:00:00+01:00") == datetime(
        2026, 12, 7, 19, tzinfo=timezone(timedelta(hours=1))
    )
