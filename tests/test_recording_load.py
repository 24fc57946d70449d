"""recording.load() against mutated real recordings (notebooks/recordings, made on the lab):
it raises ReplayError or returns a Recording whose every field has its type and range."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stapmagic import pipeline, recording, runner
from stapmagic.errors import ReplayError

REAL = sorted((Path(__file__).resolve().parents[1] / "notebooks" / "recordings").glob("*.jsonl"))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.just(1e300)
    | st.text(max_size=8)
    | st.sampled_from(["0", "yes", "SIGTERM", "kprobe", "lab", "!!", "aGk=", "local"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def _containers(obj, path=()):
    """Every (path, container) inside a JSON object, the object itself first."""
    yield path, obj
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    )
    for key, value in items:
        if isinstance(value, (dict, list)):
            yield from _containers(value, (*path, key))


def _mutate(data, objs):
    """One edit of the parsed lines: replace, drop or add a value, or drop/duplicate a line."""
    what = data.draw(st.sampled_from(["set", "drop_key", "drop_line", "dup_line", "swap"]))
    i = data.draw(st.integers(0, len(objs) - 1))
    if what == "drop_line":
        del objs[i]
    elif what == "dup_line":
        objs.insert(i, json.loads(json.dumps(objs[i])))
    elif what == "swap":
        j = data.draw(st.integers(0, len(objs) - 1))
        objs[i], objs[j] = objs[j], objs[i]
    else:
        places = list(_containers(objs[i]))
        _, box = data.draw(st.sampled_from(places))
        if isinstance(box, dict):
            keys = [*box, "extra"] if what == "set" else list(box)
            if not keys:
                return
            key = data.draw(st.sampled_from(keys))
            if what == "set":
                box[key] = data.draw(json_values)
            else:
                del box[key]
        elif isinstance(box, list) and box:
            k = data.draw(st.integers(0, len(box) - 1))
            if what == "set":
                box[k] = data.draw(json_values)
            else:
                del box[k]


def _assert_valid(rec):
    h = rec.header
    assert h.kind in ("kprobe", "stap")
    for name in ("spec", "script", "target", "kernel_release", "stap_version", "stapmagic_version"):
        assert isinstance(getattr(h, name), str), name
    runner.parse_target(h.target)
    assert h.argv and all(isinstance(a, str) for a in h.argv)
    assert all(isinstance(ln, str) for ln in h.kallsyms)
    assert isinstance(h.started, float) and math.isfinite(h.started) and h.started >= 0
    _dt.datetime.fromtimestamp(h.started, _dt.timezone.utc)
    assert isinstance(h.options, dict)
    hints = typing.get_type_hints(pipeline.ProbeOptions)
    known = {k: v for k, v in h.options.items() if k in hints}
    # What a recording says about the options can be made into ProbeOptions of those types.
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in known.items()}
    opts = pipeline.ProbeOptions(**fields)
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        if isinstance(value, float):
            assert math.isfinite(value), f.name
        assert not (isinstance(value, bool) and hints[f.name] in (int, int | None)), f.name
    for c in rec.chunks:
        assert isinstance(c.t, float) and math.isfinite(c.t) and c.t >= 0
        assert isinstance(c.data, bytes)
    e = rec.end
    assert e.exit_status is None or (type(e.exit_status) is int and 0 <= e.exit_status <= 255)
    assert e.signal is None or (type(e.signal) is int and 1 <= e.signal <= 64)
    assert type(e.interrupted) is bool
    assert e.escalated in (None, "SIGTERM", "SIGKILL")
    assert isinstance(e.duration, float) and math.isfinite(e.duration) and e.duration >= 0
    assert isinstance(recording.describe(rec), str)
    got = []
    status = recording.Player(rec)(h.argv, got.append)
    assert b"".join(got) == rec.output and status.exit_status == e.exit_status


def test_the_real_recordings_load():
    assert len(REAL) >= 5
    for path in REAL:
        _assert_valid(recording.load(path))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_mutated_recording_is_refused_or_valid(tmp_path, data):
    source = data.draw(st.sampled_from(REAL))
    objs = [json.loads(ln) for ln in source.read_text().splitlines()]
    for _ in range(data.draw(st.integers(1, 3))):
        if objs:
            _mutate(data, objs)
    text = "".join(json.dumps(obj) + "\n" for obj in objs)
    cut = data.draw(st.none() | st.integers(0, len(text)))
    raw = text.encode() if cut is None else text.encode()[:cut]
    path = tmp_path / "m.jsonl"
    path.write_bytes(raw)
    try:
        rec = recording.load(path)
    except ReplayError as exc:
        assert str(path) in str(exc)
        return
    _assert_valid(rec)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe\n",
        b"[" * 100_000 + b"\n",
        b'{"format": "stapmagic-recording", "version": 1' + b', "started": ' + b"9" * 5000 + b"}\n",
        b"\x00\n",
    ],
)
def test_hostile_bytes_are_replay_errors(tmp_path, raw):
    path = tmp_path / "h.jsonl"
    path.write_bytes(raw)
    with pytest.raises(ReplayError, match="h.jsonl"):
        recording.load(path)


def test_every_header_field_is_checked():
    assert set(recording._HEADER_CHECKS) == {f.name for f in dataclasses.fields(recording.Header)}
