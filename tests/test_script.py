"""script.py: golden scripts for the issue's examples, schemas, printf splitting, stop logic.

Regenerate the goldens after an intended change, then review every line of the diff:
    STAPMAGIC_REGEN_GOLDEN=1 python -m pytest tests/test_script.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from stapmagic.errors import OptionError, SpecError
from stapmagic.script import (
    COUNT_KEYS,
    MAX_PRINTF_ARGS,
    PAIR_SLOTS,
    REGS_ALLOWED,
    Aggregate,
    Column,
    ProbeSchema,
    Script,
    ScriptOptions,
    generate,
    module_statement_probe,
)
from stapmagic.spec import REGISTER_COLUMNS, Arg, Probe, Spec, parse_spec

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("STAPMAGIC_REGEN_GOLDEN") == "1"


def gen(first_line: str, body: str = "", guru: bool = False, **opts) -> Script:
    return generate(parse_spec(body, guru=guru, first_line=first_line), ScriptOptions(**opts))


def _module_by_address() -> Script:
    spec = parse_spec("", first_line="ext4:ext4_file_open inode:ptr filp:ptr")
    probe = module_statement_probe(spec.probes[0], 0xFFFFFFFFC062C480)
    return generate(Spec((probe,)), ScriptOptions())


# name -> the script; the issue's six examples first (`-c CMD` changes nothing in the script).
CASES = {
    "tcp_v4_connect_args": lambda: gen("tcp_v4_connect sk:ptr uaddr:ptr len:uint"),
    "tcp_v4_connect_return": lambda: gen("tcp_v4_connect.return:int"),
    "print_regs_count1": lambda: gen("tcp_v4_connect", print_regs=True, count=1),
    "regs_rip_rax_rdi": lambda: gen("tcp_v4_connect", regs=("rip", "rax", "rdi")),
    "ext4_module": lambda: gen("ext4:ext4_file_open inode:ptr filp:ptr"),
    "guru_address": lambda: gen("0xffffffff8125e2a0", guru=True),
    # beyond the issue: latency pairing with strings, -n, -T and -x; a module by address
    "pair_latency": lambda: gen(
        "do_sys_openat2.call+return:int dfd:int filename:ustr",
        "vfs_read.return:long",
        count=100,
        duration=2.5,
        filter_pid=True,
    ),
    "module_by_address": _module_by_address,
    # issue 4: pairing by option, in-kernel histograms and counts
    "latency_option": lambda: gen(
        "tcp_v4_connect sk:ptr len:uint", "tcp_v4_connect.return:int", latency=True
    ),
    "hist_latency": lambda: gen("tcp_v4_connect sk:ptr", hist="latency"),
    "hist_retval": lambda: gen("tcp_v4_connect.return:int", hist="retval", count=1000),
    "hist_linear_arg": lambda: gen(
        "tcp_v4_connect _ _ len:uint",
        "tcp_v6_connect _ _ len:uint",
        hist="len",
        hist_linear=(0, 64, 8),
    ),
    "count_by_comm": lambda: gen("tcp_v4_connect", filter_pid=True, count_by="comm"),
    "count_by_str_arg": lambda: gen(
        "do_sys_openat2.call+return:int dfd:int name:ustr", count_by="name"
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    text = CASES[name]().text
    path = GOLDEN / f"{name}.stp"
    if REGEN:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}: run with STAPMAGIC_REGEN_GOLDEN=1"
    assert text == path.read_text()


# -- schemas -------------------------------------------------------------------------------


def test_schemas_of_the_examples():
    assert gen("tcp_v4_connect sk:ptr uaddr:ptr len:uint").probes == (
        ProbeSchema(
            "tcp_v4_connect",
            (Column("sk", "hex"), Column("uaddr", "hex"), Column("len", "uint")),
            False,
        ),
    )
    assert gen("tcp_v4_connect.return:int").probes == (
        ProbeSchema(
            "tcp_v4_connect.return", (Column("retval", "int"), Column("errno", "errno")), False
        ),
    )
    assert gen("tcp_v4_connect", print_regs=True, count=1).probes == (
        ProbeSchema("tcp_v4_connect", (), True),
    )
    assert gen("tcp_v4_connect", regs=("rip", "rax", "rdi")).probes == (
        ProbeSchema(
            "tcp_v4_connect",
            (Column("rip", "hex"), Column("rax", "hex"), Column("rdi", "hex")),
            False,
        ),
    )
    assert gen("ext4:ext4_file_open inode:ptr filp:ptr").probes == (
        ProbeSchema("ext4:ext4_file_open", (Column("inode", "hex"), Column("filp", "hex")), False),
    )
    script = gen("0xffffffff8125e2a0", guru=True)
    assert script.probes == (ProbeSchema("0xffffffff8125e2a0", (), False),)
    assert script.guru


def test_guru_only_for_statement_probes():
    assert not gen("tcp_v4_connect").guru
    assert not gen("ext4:ext4_file_open").guru
    assert _module_by_address().guru


def test_schema_kinds_and_order():
    s = gen("f.call+return:u32 a:s32 _ b:u64 c:str d:ustr _:ptr", regs=("rsi",)).probes[0]
    assert s.columns == (
        Column("a", "int"),
        Column("b", "uint"),
        Column("c", "str"),
        Column("d", "str"),
        Column("retval", "uint"),
        Column("latency_ns", "int"),
        Column("rsi", "hex"),
    )
    assert s.label == "f.call+return"


@pytest.mark.parametrize(
    "rettype,kind,errno",
    [
        ("int", "int", True),
        ("s32", "int", True),
        ("long", "int", True),
        ("s64", "int", True),
        ("longlong", "int", True),
        ("uint", "uint", False),
        ("u32", "uint", False),
        ("ulong", "uint", False),
        ("u64", "uint", False),
        ("ulonglong", "uint", False),
        ("ptr", "hex", False),
    ],
)
def test_return_columns(rettype, kind, errno):
    cols = gen(f"f.return:{rettype}").probes[0].columns
    assert cols[0] == Column("retval", kind)
    assert (Column("errno", "errno") in cols) == errno


def test_record_field_count_matches_schema():
    """Every printf record has 7 fixed fields, one per column, and the end marker."""
    spec = "f.call+return:int a:int b:str c:ptr"
    script = gen(spec, "g x:u32 y:ustr\nh.return:ptr", regs=("rip", "r15"))
    records = _records(script.text)
    assert len(records) == 3
    for n, ((idx, fmt), schema) in enumerate(zip(records, script.probes, strict=True)):
        assert idx == n
        fields = fmt.split("\\t")
        assert fields[0] == "@@sm1" and fields[-1] == "@@\\n"
        assert len(fields) == 7 + len(schema.columns) + 1
        assert fields[2:7] == ["%d", "%d", "%d", "%d", "%s"]
        expected = {"int": "%d", "uint": "%u", "hex": "%x", "str": "%s", "errno": "%s"}
        assert fields[7:-1] == [expected[c.kind] for c in schema.columns]


def _records(text: str) -> list[tuple[int, str]]:
    """(probe_index, joined format) per record: consecutive printf calls make one record."""
    out: list[tuple[int, str]] = []
    current = ""
    for fmt in re.findall(r'\bprintf\("([^"]*)"', text):
        if fmt.startswith(("@@smc", "stapmagic:")):  # counters; the begin probe's line
            continue
        current += fmt
        if fmt.endswith("\\n"):
            out.append((int(current.split("\\t")[1]), current))
            current = ""
    assert current == ""
    return out


# -- printf argument limit -------------------------------------------------------------------


def test_printf_split_at_the_argument_limit():
    args = " ".join(f"a{i}:long" for i in range(1, 17))
    script = gen(f"f.call+return:int {args}", regs=REGS_ALLOWED)
    calls = [
        line.strip()
        for line in script.text.splitlines()
        if line.strip().startswith('printf("@@sm1') or line.strip().startswith('printf("\\t')
    ]
    # 5 fixed + 16 args + retval, errno, latency + 18 registers = 42 arguments: two calls.
    assert len(calls) == 2
    assert _arg_count(calls[0]) == MAX_PRINTF_ARGS and _arg_count(calls[1]) == 42 - 32
    assert calls[0].startswith('printf("@@sm1\\t0\\t') and "\\n" not in calls[0]
    assert calls[1].startswith('printf("\\t') and calls[1].split('"')[1].endswith("\\t@@\\n")
    ((idx, fmt),) = _records(script.text)
    assert len(fmt.split("\\t")) == 7 + 16 + 3 + 18 + 1


def _arg_count(call: str) -> int:
    """Arguments of one printf(...) line: top-level commas outside string literals."""
    depth, n, in_str = 0, 0, False
    for c in call[len("printf(") : -1]:
        if c == '"':
            in_str = not in_str
        elif not in_str and c == "(":
            depth += 1
        elif not in_str and c == ")":
            depth -= 1
        elif not in_str and depth == 0 and c == ",":
            n += 1
    return n


def test_short_records_use_one_printf():
    text = gen("f a:int", skip_self=False).text
    assert text.split("probe end")[0].count("printf(") == 1  # the end probe is the ledger's


# -- readers, strings, guards ----------------------------------------------------------------


def test_readers_per_type():
    text = gen(
        "f a:int b:uint c:long d:ulong e:longlong g:ulonglong h:s32 i:s64 j:u32 k:u64 l:ptr"
    ).text
    for n, reader in enumerate(
        [
            "int_arg",
            "uint_arg",
            "long_arg",
            "ulong_arg",
            "longlong_arg",
            "ulonglong_arg",
            "s32_arg",
            "s64_arg",
            "u32_arg",
            "u64_arg",
            "pointer_arg",
        ],
        start=1,
    ):
        assert f"a{n} = {reader}({n})" in text


def test_skipped_positions_are_not_read():
    text = gen("f _ b:int _:ptr d:ptr").text
    assert "a2 = int_arg(2)" in text and "a4 = pointer_arg(4)" in text
    assert "(1)" not in text and "(3)" not in text


def test_asmlinkage_before_reading_arguments():
    text = gen("f a:int").text
    assert text.index("asmlinkage()") < text.index("int_arg(1)")
    assert "asmlinkage()" not in gen("f").text


def test_strings_are_fault_safe_and_escaped():
    text = gen("f a:str b:ustr", string_max=100).text
    assert "a1 = __sm_kstr(pointer_arg(1), 100)" in text
    assert "a2 = __sm_ustr(pointer_arg(2), 100)" in text
    assert 'try { return text_str(kernel_string_n(addr, n)) } catch { return "<fault>" }' in text
    assert 'return text_str(user_string_n(addr, n, "<fault>"))' in text
    assert "text_str(execname())" in text
    assert "__sm_kstr" not in gen("f a:ptr").text


def test_every_event_probe_skips_stapio_first():
    text = gen("f a:int", "g.return\nh.call+return x:str", filter_pid=True).text
    bodies = re.findall(r"probe kprobe[^\n]*\n\{\n(.*?)\n\}", text, re.S)
    assert len(bodies) == 4
    for body in bodies:
        lines = body.split("\n")
        assert lines[0].startswith("\tif (pid() == stp_pid()) next")
        assert lines[1].startswith("\tif (pid() in __sm_self")  # tests/test_selfskip.py
        assert lines[2].startswith("\tif (pid() != target()) next")
    assert "target()" not in gen("f").text


def test_return_value_sign_extension():
    assert "rv = (r << 32) >> 32" in gen("f.return:int").text
    assert "rv = r & 0xffffffff" in gen("f.return:uint").text
    assert "rv = r\n" in gen("f.return:long").text
    assert "errno_str(rv)" in gen("f.return:s64").text
    assert "errno_str" not in gen("f.return:ptr").text


def test_count_stops_and_drops_late_records():
    text = gen("f", "g.return", count=5).text
    assert "global __sm_n" in text
    assert text.count("k = ++__sm_n") == 2
    assert text.count("if (k > 5) next") == 2
    assert text.count("if (k == 5) exit()") == 2
    # the guard comes before the record, exit() after it
    first = text[text.index('probe kprobe.function("f")') :]
    assert first.index("if (k > 5) next") < first.index("printf(") < first.index("exit()")
    assert "__sm_n" not in gen("f").text


def test_duration_timer():
    assert "probe timer.ms(2500)\n{\n\texit()" in gen("f", duration=2.5).text
    assert "probe timer.ms(1)" in gen("f", duration=0.0001).text
    assert "timer" not in gen("f").text


def test_print_regs_right_after_the_record():
    text = gen("f a:int", print_regs=True).text
    lines = [ln.strip() for ln in text.splitlines()]
    i = next(i for i, ln in enumerate(lines) if ln.startswith('printf("@@sm1'))
    assert lines[i + 1] == "print_regs()"


def test_regs_are_u_register_hex():
    text = gen("f", regs=("rip", "rax")).text
    assert (
        '%x\\t%x\\t@@\\n", now, pid(), tid(), cpu(), text_str(execname()), '
        'u_register("rip"), u_register("rax"))' in text
    )


def test_pair_bookkeeping():
    text = gen("f.call+return:int a:ptr").text
    assert f"global __sm_p0_depth%[{PAIR_SLOTS}]" in text
    assert f"global __sm_p0_a1%[{PAIR_SLOTS}]" in text
    assert "d = __sm_p0_depth[t]++" in text and "d = --__sm_p0_depth[t]" in text
    assert "__sm_p0_unpaired++" in text
    assert 'printf("@@smc\\tunpaired\\t0\\t%d\\t@@\\n", __sm_p0_unpaired)' in text
    assert "lat = now - __sm_p0_t0[t, d]" in text
    assert "unpaired" not in gen("f.return").text


def test_module_function_is_probed_by_name():
    text = gen("ext4:ext4_file_open").text
    assert 'probe kprobe.function("ext4_file_open")' in text
    assert "kprobe.module(M).function(F) registers" in text
    assert 'ext4"' not in text and "ext4:" not in text


def test_module_statement_probe():
    probe = parse_spec("", first_line="ext4:ext4_file_open a:ptr").probes[0]
    moved = module_statement_probe(probe, 0xFFFFFFFFC062C480)
    assert moved.address == 0xFFFFFFFFC062C480 and moved.label == "ext4:ext4_file_open"
    text = generate(Spec((moved,)), ScriptOptions()).text
    assert "probe kprobe.statement(0xffffffffc062c480).absolute" in text
    assert "kprobe.function" not in text
    ret = parse_spec("", first_line="ext4:ext4_file_open.return").probes[0]
    with pytest.raises(SpecError):
        module_statement_probe(ret, 0xFFFFFFFFC062C480)
    with pytest.raises(SpecError):
        module_statement_probe(probe, 1 << 64)


# -- defence in depth and options ------------------------------------------------------------


def _probe(**kw) -> Probe:
    base = dict(
        function="f",
        module=None,
        address=None,
        kind="entry",
        rettype=None,
        args=(),
        text="f",
        label="f",
    )
    base.update(kw)
    return Probe(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "probe",
    [
        _probe(function='f") probe begin { system("id") } probe kprobe.function("g'),
        _probe(function="tcp_*"),
        _probe(function=""),
        _probe(function=None),
        _probe(module='x"'),
        _probe(function="f\n"),
        _probe(function="f\u0131"),
        _probe(address=0, function=None),
        _probe(address=1 << 64, function=None),
        _probe(address="0x1).absolute { } probe begin { (", function=None),  # type: ignore[arg-type]
        _probe(address=True, function=None),
        _probe(args=(Arg("x", "int", '1); system("id"); (0'),)),  # type: ignore[arg-type]
        _probe(kind="return", rettype="str"),
        _probe(kind="bogus"),
        _probe(args=(Arg("x", "char", 1),)),
        _probe(args=(Arg("x y", "int", 1),)),
        _probe(args=(Arg("x", "int", 17),)),
    ],
)
def test_generate_rechecks_what_it_interpolates(probe):
    with pytest.raises(SpecError):
        generate(Spec((probe,)), ScriptOptions())


def test_empty_spec_is_refused():
    with pytest.raises(SpecError):
        generate(Spec(()), ScriptOptions())


@pytest.mark.parametrize(
    "kw",
    [
        dict(count=0),
        dict(count=-1),
        dict(count=True),
        dict(duration=0),
        dict(duration=-1.0),
        dict(duration=float("nan")),
        dict(duration=float("inf")),
        dict(string_max=0),
        dict(string_max=512),
        dict(regs=("ax",)),
        dict(regs=("cr3",)),
        dict(regs=("rip", "rip")),
        dict(regs=("rip",), print_regs=True),
        dict(regs=('rip") } probe begin { ("',)),
        dict(hist="latency_ns"),
    ],
)
def test_bad_options(kw):
    with pytest.raises(OptionError):
        ScriptOptions(**kw)


def test_regs_allowed_are_register_columns():
    assert set(REGS_ALLOWED) <= set(REGISTER_COLUMNS)


# -- issue 4: --latency, --hist, --count-by ----------------------------------------------------


def test_latency_pairs_entry_probes_only():
    script = gen(
        "tcp_v4_connect sk:ptr", "tcp_v4_connect.return:int\nf.call+return:u32", latency=True
    )
    assert [p.label for p in script.probes] == [
        "tcp_v4_connect.call+return",
        "tcp_v4_connect.return",
        "f.call+return",
    ]
    assert script.probes[0].columns == (
        Column("sk", "hex"),
        Column("retval", "int"),
        Column("errno", "errno"),
        Column("latency_ns", "int"),
    )
    assert script.probes[2].columns[0] == Column("retval", "uint")
    assert script.aggregate is None
    # the same script as writing .call+return (return type long) by hand
    assert (
        script.text
        == gen(
            "tcp_v4_connect.call+return sk:ptr", "tcp_v4_connect.return:int\nf.call+return:u32"
        ).text
    )


def test_latency_refuses_address_probes():
    with pytest.raises(OptionError, match="address probe"):
        gen("0xffffffff8125e2a0", guru=True, latency=True)


def test_aggregating_scripts_print_no_records():
    for kw in (
        dict(hist="latency"),
        dict(hist="retval", latency=True),
        dict(hist="len"),
        dict(count_by="comm"),
        dict(count_by="len"),
        dict(count_by="retval", latency=True),
    ):
        script = gen("tcp_v4_connect sk:ptr _ len:uint", "g len:int", **kw)
        assert "@@sm1" not in script.text.replace("one @@sm1 record per event", ""), kw
        assert "now = gettimeofday_ns()" not in script.text or kw.get("hist") == "latency"
        paired = kw.get("latency") or kw.get("hist") == "latency"
        # + the unpaired counters, + the ledger's fired counts
        assert script.text.count("\nprobe end\n") == 2 + bool(paired) + 1


def test_hist_values_per_kind():
    assert "__sm_h0 <<< lat" in gen("f", hist="latency").text
    assert "__sm_h0 <<< rv" in gen("f.return:int", hist="retval").text
    text = gen("f a:int b:ptr", hist="b").text
    assert "a2 = pointer_arg(2)" in text and "__sm_h0 <<< a2" in text
    assert "int_arg(1)" not in text  # only what is aggregated is read
    assert gen("f", hist="latency").aggregate == Aggregate("hist", "latency", "log")
    assert gen("f a:int", hist="a", hist_linear=(-10, 10, 5)).aggregate == Aggregate(
        "hist", "a", "linear:-10:10:5"
    )


def test_hist_end_guards_empty_aggregates():
    text = gen("f a:int", "g a:int", hist="a", hist_linear=(0, 100, 10)).text
    for i, name in enumerate(("f", "g")):
        h = f"__sm_h{i}"
        end = text[text.index(f"if (@count({h}) > 0)") :]
        end = end[: end.index("\n}\n")]
        guarded, empty = end.split("} else")
        assert f"@min({h})" in guarded and f"@min({h})" not in empty
        assert f"print(@hist_linear({h}, 0, 100, 10))" in guarded
        assert f'printf("@@smh\\t{name}\\tlinear:0:100:10\\n")' in guarded
        assert f'printf("@@sms\\t{name}\\t0\\t\\t\\t\\t\\t@@\\n")' in empty


def test_summary_and_key_formats_match_the_parsers():
    """The tag lines the end probes print have the field counts hist.py/records.py read."""
    text = gen("f a:str", count_by="a").text + gen("f", hist="latency").text
    fmts: dict[str, str] = {}
    for f in re.findall(r'printf\("(@@sm[skc][^"]*)"', text):
        fmts.setdefault(f.split("\\t")[0], f)
    assert fmts["@@sms"].split("\\t") == [
        "@@sms",
        "f.call+return",
        "%d",
        "%d",
        "%d",
        "%d",
        "%d",
        "@@\\n",
    ]
    assert fmts["@@smk"].split("\\t") == ["@@smk", "f", "%s", "%d", "@@\\n"]
    assert fmts["@@smc"].split("\\t") == ["@@smc", "count_overflow", "0", "%d", "@@\\n"]


@pytest.mark.parametrize(
    "key,expr,printed,kind",
    [
        ("comm", "key = execname()", "text_str(k)", "str"),
        ("pid", "key = pid()", '%d\\t%d\\t@@\\n", k,', "int"),
        ("cpu", "key = cpu()", '%d\\t%d\\t@@\\n", k,', "int"),
        ("p", "key = a1", '%x\\t%d\\t@@\\n", k,', "hex"),
        ("s", "key = a2", '%s\\t%d\\t@@\\n", k,', "str"),
    ],
)
def test_count_by_keys(key, expr, printed, kind):
    script = gen("f p:ptr s:str", count_by=key)
    assert expr in script.text and printed in script.text
    assert f"global __sm_k0[{COUNT_KEYS}]" in script.text
    assert "foreach (k in __sm_k0-)" in script.text
    assert script.aggregate == Aggregate("count", key, key_kinds=(kind,))


def test_count_by_cannot_overflow_the_array():
    text = gen("f", count_by="pid").text
    assert f"else if (__sm_kn0 < {COUNT_KEYS}) {{" in text
    assert "__sm_kover0++" in text


@pytest.mark.parametrize(
    "first,body,kw,needle",
    [
        ("f.return:int", "", dict(hist="latency"), "no entry to measure from"),
        ("f", "", dict(hist="retval"), "is an entry probe"),
        ("f", "", dict(count_by="retval"), "is an entry probe"),
        ("f a:int", "g", dict(hist="a"), "g has no argument 'a'"),
        ("f a:str", "", dict(hist="a"), "is a string"),
        ("f.return", "", dict(count_by="x"), "has no argument 'x'"),
    ],
)
def test_aggregation_errors_name_the_probe(first, body, kw, needle):
    with pytest.raises(OptionError, match=needle):
        gen(first, body, **kw)


@pytest.mark.parametrize(
    "kw",
    [
        dict(hist="latency_ns"),
        dict(hist="pid"),
        dict(hist="a b"),
        dict(count_by="time"),
        dict(count_by='x"'),
        dict(hist="latency", count_by="comm"),
        dict(hist_linear=(0, 10, 1)),
        dict(hist="a", hist_linear=(0, 10, 0)),
        dict(hist="a", hist_linear=(10, 0, 1)),
        dict(hist="a", hist_linear=(0, 126, 1)),
        dict(hist="a", hist_linear=(0, 1 << 31, 1 << 30)),
        dict(hist="latency", regs=("rip",)),
        dict(count_by="comm", print_regs=True),
    ],
)
def test_bad_aggregation_options(kw):
    with pytest.raises(OptionError):
        ScriptOptions(**kw)


def test_linear_bucket_limit_is_systemtaps():
    ScriptOptions(hist="a", hist_linear=(0, 125, 1))  # (stop - start) / interval + 3 == 128
    with pytest.raises(OptionError, match="at most 125"):
        ScriptOptions(hist="a", hist_linear=(0, 126, 1))


def test_one_end_probe_per_aggregate():
    """Each end handler has its own action budget, which a foreach over the keys needs."""
    text = gen("f", "g\nh.return", count_by="comm").text
    ends = re.findall(r"probe end\n\{\n(.*?)\n\}", text, re.S)
    assert len(ends) == 4  # the last is the ledger's
    assert [e.count("foreach") for e in ends] == [1, 1, 1, 0]
