"""wire.py is the one owner of the record tags, separator, kinds and register list: every
other spelling (the C scanner, script.py, records, hist, spec, schema) is checked here
against it, so a change in one place that is not made in the others fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stapmagic import hist, records, schema, script, spec, wire
from stapmagic.schema import Column, ProbeSchema
from stapmagic.spec import parse_spec

C_SOURCE = Path(wire.__file__).with_name("_recscan.c").read_text()


def c_define(name: str) -> str:
    m = re.search(rf"^#define {name} (.+?)\s*(?:/\*.*)?$", C_SOURCE, re.M)
    assert m is not None, f"_recscan.c has no #define {name}"
    return m.group(1)


def c_string(literal: str) -> str:
    assert literal[0] in "\"'" and literal[-1] == literal[0], literal
    return literal[1:-1].encode().decode("unicode_escape")


def test_c_scanner_source_spells_the_wire() -> None:
    assert c_string(c_define("RECORD_PREFIX")).encode() == wire.RECORD_PREFIX_B
    assert c_string(c_define("END_TAG")) == wire.END_TAG
    assert c_string(c_define("FIELD_SEP")) == wire.FIELD_SEP
    assert c_string(c_define("FIELD_SEP_STR")) == wire.FIELD_SEP
    assert c_string(c_define("NA_FIELD")) == wire.NA_FIELD
    codes = c_string(c_define("KIND_CODES"))
    assert codes.encode() == b"".join(wire.SCAN_KIND_CODES[k] for k in schema.COLUMN_KINDS)
    enum = dict(re.findall(r"K_([A-Z]+) = '(.)'", C_SOURCE))
    assert {k.lower(): v.encode() for k, v in enum.items()} == dict(wire.SCAN_KIND_CODES)
    # no other spelling of the tags left in the scanner's code
    code = re.sub(r"^#define .*$", "", C_SOURCE, flags=re.M)
    assert "@@" not in re.sub(r"/\*.*?\*/", "", code, flags=re.S)


def test_built_scanner_has_the_wire_constants() -> None:
    rs = pytest.importorskip("stapmagic._recscan")
    assert rs.RECORD_PREFIX.encode() == wire.RECORD_PREFIX_B
    assert rs.END_TAG == wire.END_TAG and rs.FIELD_SEP == wire.FIELD_SEP
    assert rs.NA_FIELD == wire.NA_FIELD
    assert rs.KIND_CODES.encode() == b"".join(wire.SCAN_KIND_CODES[k] for k in schema.COLUMN_KINDS)


def test_script_and_readers_use_the_wire() -> None:
    assert (
        script.RECORD_TAG,
        script.HIST_TAG,
        script.HIST_END_TAG,
        script.SUMMARY_TAG,
        script.KEYS_TAG,
        script.COUNTER_TAG,
    ) == (
        wire.RECORD_TAG,
        wire.HIST_TAG,
        wire.HIST_END_TAG,
        wire.SUMMARY_TAG,
        wire.KEYS_TAG,
        wire.COUNTER_TAG,
    )
    assert records.RECORD_TAG == wire.RECORD_TAG.encode()
    assert hist.SUMMARY_TAG == wire.SUMMARY_TAG
    # what the generated script prints starts with the wire's record prefix
    text = script.generate(parse_spec("tcp_v4_connect sk:ptr"), script.ScriptOptions()).text
    assert f'printf("{wire.RECORD_TAG}\\t0' in text


def test_one_register_list() -> None:
    assert schema.PRINT_REGS_COLUMNS is wire.PRINT_REGS_COLUMNS
    assert spec.REGISTER_COLUMNS is wire.PRINT_REGS_COLUMNS
    assert script.REGS_ALLOWED is wire.U_REGISTERS
    assert wire.U_REGISTERS == wire.PRINT_REGS_COLUMNS[:18]
    assert set(wire.PRINT_REGS_COLUMNS) <= spec.RESERVED_NAMES


def test_format_record_follows_the_grammar() -> None:
    s = ProbeSchema("p", (Column("a", "hex"), Column("s", "str")), False)
    line = wire.format_record(0, 5, 1, 2, 3, "sh", [255, "x\ty"], schema=s)
    fields = line.rstrip(b"\n").split(wire.SEP_B)
    assert fields[0] == wire.RECORD_TAG_B and fields[-1] == wire.END_B
    assert len(fields) == 1 + len(wire.RECORD_FIELDS) + 2 + 1
    assert fields[7:9] == [b"ff", rb"x\ty"]
    assert wire.parse_record(line.rstrip(b"\n"), [s]) == wire.ParsedRecord(
        0, 5, 1, 2, 3, "sh", (255, "x\ty")
    )


def test_every_tag_starts_with_the_tag_prefix() -> None:
    tags = (
        wire.RECORD_TAG,
        wire.HIST_TAG,
        wire.HIST_END_TAG,
        wire.SUMMARY_TAG,
        wire.KEYS_TAG,
        wire.COUNTER_TAG,
    )
    assert all(t.startswith(wire.TAG_PREFIX) for t in tags)
