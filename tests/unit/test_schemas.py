from __future__ import annotations

import orjson
import pytest

from streamer.schemas import DeadLetter, Event, Prediction, decode_event

GOOD = {"unique_id": "s1", "ds": "2024-01-01", "y": 1.5}


def dec(
    value: bytes | None, key: bytes | None = b"s1", features: tuple[str, ...] = ()
) -> Event | DeadLetter:
    return decode_event(key, value, 2, 99, features)


def test_good_event_decodes_with_features_in_model_order() -> None:
    ev = dec(orjson.dumps({**GOOD, "b": 2, "a": 1.0}), features=("a", "b"))
    assert ev == Event("s1", "2024-01-01", 1.5, (1.0, 2.0), 2, 99)


#: Found accepted (or refused for the wrong reason) by a hostile-input run with kcat.
_GOOD_TEXT = '{"unique_id": "s1", "ds": "2024", "y": 1.5}'
HOSTILE = [
    (b"\xef\xbb\xbf" + _GOOD_TEXT.encode(), b"s1", (), "invalid_json"),  # UTF-8 byte-order mark
    (_GOOD_TEXT.encode("utf-16"), b"s1", (), "invalid_json"),
    (_GOOD_TEXT.encode("utf-16-le"), b"s1", (), "invalid_json"),
    (_GOOD_TEXT.encode("utf-32"), b"s1", (), "invalid_json"),
    (_GOOD_TEXT.encode("utf-32-be"), b"s1", (), "invalid_json"),
    (b'{"y":"a","y":1.5,"unique_id":"s1","ds":"2024"}', b"s1", (), "duplicate_field"),
    (b'{"y":1.5,"unique_id":"s9","unique_id":"s1","ds":"2024"}', b"s1", (), "duplicate_field"),
    (b'{"y":1.5,"unique_id":"s1","ds":"x","ds":"2024"}', b"s1", (), "duplicate_field"),
    (b'{"y":1.5,"y":1.5,"unique_id":"s1","ds":"2024"}', b"s1", (), "duplicate_field"),
    (
        b'{"unique_id":"s1","ds":"2024","y":1,"a":' + b"[" * 3000 + b"]" * 3000 + b"}",
        b"s1",
        ("a",),
        "invalid_json",
    ),
    (
        b'{"unique_id":"s1","ds":"2024","y":' + b"[" * 100 + b"]" * 100 + b"}",
        b"s1",
        (),
        "invalid_json",
    ),
    (b"[" * 3000 + b"]" * 3000, b"s1", (), "invalid_json"),
    (b'{"unique_id":"s1","ds":"2024","y":' + b"[" * 10 + b"]" * 10 + b"}", b"s1", (), "wrong_type"),
    # numbers too large are out of range, however they are written
    (b'{"unique_id":"s1","ds":"2024","y":1' + b"0" * 400 + b"}", b"s1", (), "out_of_range"),
    (b'{"unique_id":"s1","ds":"2024","y":-1' + b"0" * 5000 + b"}", b"s1", (), "out_of_range"),
    (b'{"unique_id":"s1","ds":"2024","y":1' + b"0" * 40 + b"}", b"s1", (), "out_of_range"),
    (b'{"unique_id":"s1","ds":"2024","y":1e40}', b"s1", (), "out_of_range"),
    (b'{"unique_id":"s1","ds":"2024","y":1.0e400}', b"s1", (), "out_of_range"),
]


def test_deep_nesting_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    r = dec(b'{"unique_id":"s1","ds":"2024","y":' + b"[" * 30000 + b"]" * 30000 + b"}", features=())
    assert isinstance(r, DeadLetter) and r.reason == "invalid_json"
    assert "nested deeper" in r.detail and not caplog.records


def test_duplicated_text_in_escapes_and_values_is_no_duplicate() -> None:
    """Quotes and colons inside strings do not count as fields."""
    ev = dec(b'{"unique_id":"s1","ds":"2024-01-01T00:00:00 \\"y\\":","y":2}')
    assert isinstance(ev, Event) and ev.ds == '2024-01-01T00:00:00 "y":'


@pytest.mark.parametrize(
    ("value", "key", "features", "reason"),
    [
        (b"\x00\x01not json", b"s1", (), "invalid_json"),
        (b'{"unique_id": "s1", "ds": "2024", "y": 1', b"s1", (), "invalid_json"),
        (None, b"s1", (), "invalid_json"),
        (b"[1, 2, 3]", b"s1", (), "not_an_object"),
        (b'"text"', b"s1", (), "not_an_object"),
        (orjson.dumps({"ds": "2024", "y": 1.0}), b"s1", (), "missing_field"),
        (orjson.dumps({"unique_id": "s1", "y": 1.0}), b"s1", (), "missing_field"),
        (orjson.dumps({"unique_id": "s1", "ds": "2024"}), b"s1", (), "missing_field"),
        (orjson.dumps({**GOOD, "y": "1.5"}), b"s1", (), "wrong_type"),
        (orjson.dumps({**GOOD, "y": True}), b"s1", (), "wrong_type"),
        (orjson.dumps({**GOOD, "y": None}), b"s1", (), "wrong_type"),
        (orjson.dumps({**GOOD, "unique_id": 7}), b"s1", (), "wrong_type"),
        (orjson.dumps({**GOOD, "ds": 20240101}), b"s1", (), "wrong_type"),
        (b'{"unique_id": "s1", "ds": "2024", "y": NaN}', b"s1", (), "non_finite"),
        (b'{"unique_id": "s1", "ds": "2024", "y": Infinity}', b"s1", (), "non_finite"),
        (b'{"unique_id": "s1", "ds": "2024", "y": 1e999}', b"s1", (), "out_of_range"),
        (b'{"unique_id": "s1", "ds": "2024", "y": 1, "a": NaN}', b"s1", ("a",), "non_finite"),
        (orjson.dumps({**GOOD, "a": "x"}), b"s1", ("a",), "wrong_type"),
        (orjson.dumps(GOOD), b"s1", ("a",), "wrong_feature_count"),
        (orjson.dumps({**GOOD, "a": 1, "b": 2}), b"s1", ("a",), "wrong_feature_count"),
        (orjson.dumps({**GOOD, "b": 1}), b"s1", ("a",), "wrong_feature_count"),
        (orjson.dumps(GOOD), b"", (), "empty_key"),
        (orjson.dumps(GOOD), None, (), "empty_key"),
        (orjson.dumps(GOOD), b"other", (), "key_mismatch"),
        (orjson.dumps({**GOOD, "unique_id": ""}), b"s1", (), "wrong_type"),
        (b" " * 70000, b"s1", (), "too_large"),
        (orjson.dumps({**GOOD, "y": 1e300}), b"s1", (), "out_of_range"),
        (orjson.dumps({**GOOD, "y": -2e30}), b"s1", (), "out_of_range"),
        (
            b'{"unique_id": "s1", "ds": "2024", "y": 1, "a": ' + b"9" * 400 + b"}",
            b"s1",
            ("a",),
            "out_of_range",
        ),
        (b'{"unique_id": "s1", "ds": "2024", "y": ' + b"9" * 400 + b"}", b"s1", (), "out_of_range"),
        *HOSTILE,
    ],
)
def test_bad_events_get_a_reason(
    value: bytes | None, key: bytes | None, features: tuple[str, ...], reason: str
) -> None:
    r = dec(value, key, features)
    assert isinstance(r, DeadLetter), r
    assert r.reason == reason, r.detail
    assert r.value == value and r.key == key, "the dead letter keeps the original bytes"
    assert r.detail
    headers = r.headers("events")
    assert headers["streamer-reason"] == reason.encode()
    assert headers["streamer-source"] == b"events/2/99"


def test_prediction_json_round_trip() -> None:
    p = Prediction("s1", "2024-01-01", 1.5, 3, 17, "abc", 4, (1.0, 2.5))
    assert Prediction.from_json(p.to_json()) == p
    assert orjson.loads(p.to_json())["forecast"] == [1.0, 2.5]


def test_a_classifier_prediction_names_its_classes_and_label() -> None:
    p = Prediction("s1", "2024-01-01", 1.5, 3, 17, "abc", 24, (0.2, 0.8), ("1", "2"), window=24)
    doc = orjson.loads(p.to_json())
    assert doc["probabilities"] == {"1": 0.2, "2": 0.8} and doc["label"] == "2"
    assert doc["window"] == 24 and "forecast" not in doc
    assert Prediction.from_json(p.to_json()) == p
