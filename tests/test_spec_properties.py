"""Property tests: any text either parses (and then only validated names reach the script, and
only in their slot) or raises SpecError pointing inside its line. 10,400 generated specs."""

from __future__ import annotations

import dataclasses
import random
import re
import string

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from stapmagic.errors import SpecError
from stapmagic.script import REGS_ALLOWED, ScriptOptions, generate
from stapmagic.spec import (
    ARG_TYPES,
    MAX_ARGS,
    RESERVED_NAMES,
    RET_TYPES,
    Arg,
    Probe,
    Spec,
    parse_spec,
)

RNG = st.randoms(use_true_random=True)
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
SYMBOL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
FUNCTION_SLOT = re.compile(r'kprobe\.function\("([^"]*)"\)')
SCRIPT_CHARS = set(string.printable) - set("\r\x0b\x0c")

# -- valid specs, built from the grammar -----------------------------------------------------
# The builders take a `random.Random` that Hypothesis seeds (st.randoms): one draw per example
# keeps 10,000 examples inside the time budget; note() shows the failing line itself.

LETTERS = string.ascii_letters + "_"
TAIL = LETTERS + string.digits


def rand_ident(rng: random.Random, extra: str = "") -> str:
    return rng.choice(LETTERS) + "".join(
        rng.choice(TAIL + extra) for _ in range(rng.randrange(0, 12))
    )


def rand_symbol(rng: random.Random) -> str:
    # A trailing .return/.call is read as the probe kind; that rule is tested in test_spec.py.
    while True:
        name = rand_ident(rng, extra=".." if rng.random() < 0.5 else "")
        if not name.endswith((".return", ".call")):
            return name


def rand_arg_name(rng: random.Random) -> str:
    while True:
        name = rand_ident(rng)
        if name != "_" and name not in RESERVED_NAMES:
            return name


def build_valid(rng: random.Random) -> tuple[str, Probe]:
    """A spec line and the Probe it must parse to."""
    kind = rng.choice(["entry", "return", "pair", "address"])
    module: str | None = None
    rettype: str | None = None
    address: int | None = None
    function: str | None = None
    ret_written = False
    if kind == "address":
        address = rng.randrange(1, 1 << 64)
        digits = f"{address:x}".rjust(rng.randrange(0, 19), "0")
        head = rng.choice(["0x", "0X"]) + rng.choice([digits, digits.upper()])
        label = f"0x{address:x}"
        kind = "entry"
    else:
        function = rand_symbol(rng)
        if rng.random() < 0.5:
            module = rand_symbol(rng)
            if function in ARG_TYPES:  # `m:int` is refused as a forgotten .return
                function += "_"
        head = label = (f"{module}:" if module else "") + function
        if kind != "entry":
            suffix = ".return" if kind == "return" else ".call+return"
            head += suffix
            label += suffix
            rettype = "long"
            if rng.random() < 0.5:
                rettype = rng.choice(RET_TYPES)
                head += f":{rettype}"
                ret_written = True
    args: list[Arg] = []
    words = [head]
    if kind != "return":
        total = rng.randrange(0, MAX_ARGS + 1)
        used: set[str] = set()
        for i in range(1, total + 1):
            typ = rng.choice(ARG_TYPES)
            roll = rng.random()
            if roll < 0.7:
                name = rand_arg_name(rng)
                while name in used:
                    name = rand_arg_name(rng)
                used.add(name)
                args.append(Arg(name, typ, i))
                words.append(f"{name}:{typ}")
            elif roll < 0.85:
                args.append(Arg(None, typ, i))
                words.append(f"_:{typ}")
            else:
                args.append(Arg(None, "long", i))
                words.append("_")
    line = rng.choice(["", " ", "\t"]) + "".join(
        w + rng.choice([" ", "  ", "\t", " \t "]) for w in words
    )
    probe = Probe(
        function=function,
        module=module,
        address=address,
        kind=kind,  # type: ignore[arg-type]
        rettype=rettype,
        args=tuple(args),
        text=line.strip(" \t"),
        label=label,
        # what BTF fills in on a target that has it: every parameter of a function named
        # without arguments, the return type not written
        all_params=function is not None and kind != "return" and not args,
        ret_from_btf=function is not None and not ret_written and (kind != "entry" or not args),
    )
    return line, probe


def build_options(rng: random.Random) -> ScriptOptions:
    print_regs = rng.random() < 0.3
    regs = () if print_regs else tuple(rng.sample(REGS_ALLOWED, rng.randrange(0, 6)))
    return ScriptOptions(
        count=rng.choice([None, rng.randrange(1, 10**9)]),
        duration=rng.choice([None, rng.uniform(0.001, 86400.0)]),
        regs=regs,
        print_regs=print_regs,
        filter_pid=rng.random() < 0.5,
        string_max=rng.randrange(1, 512),
    )


def anonymous(spec: Spec) -> Spec:
    """The same spec with every user-chosen name replaced by a fixed one."""
    return Spec(
        tuple(
            dataclasses.replace(
                p,
                function=None if p.function is None else "F",
                module=None if p.module is None else "M",
                args=tuple(
                    dataclasses.replace(a, name=None if a.name is None else f"n{a.index}")
                    for a in p.args
                ),
                text="",
                label="",
            )
            for p in spec.probes
        )
    )


def check_script(spec: Spec, opts: ScriptOptions) -> None:
    """Names reach the script only inside kprobe.function("...") and only validated."""
    text = generate(spec, opts).text
    assert set(text) <= SCRIPT_CHARS
    slots = FUNCTION_SLOT.findall(text)
    expected = [
        p.function
        for p in spec.probes
        if p.address is None
        for _ in range(2 if p.kind == "pair" else 1)
    ]
    assert slots == expected
    for name in slots:
        assert SYMBOL_RE.fullmatch(name)
    # Replacing every name changes nothing but the slots: names go nowhere else.
    masked = FUNCTION_SLOT.sub('kprobe.function("F")', text)
    assert masked == generate(anonymous(spec), opts).text


def check_error(err: SpecError) -> None:
    assert 0 <= err.pos <= len(err.source)
    assert err.length >= 1 and err.line >= 1
    assert err.message
    assert err.source.isprintable()  # no terminal escapes or bidi controls shown


@settings(max_examples=4000, **SETTINGS)
@given(RNG)
def test_valid_specs_parse_exactly(rng):
    line, probe = build_valid(rng)
    opts, in_body = build_options(rng), rng.random() < 0.5
    note(f"line={line!r}")
    if in_body:
        spec = parse_spec(f"# comment\n\n{line}", guru=True)
        probe = dataclasses.replace(probe, lineno=4)  # the body's third line
    else:
        spec = parse_spec("", guru=True, first_line=line)
    assert spec == Spec((probe,))
    check_script(spec, opts)


@settings(max_examples=600, **SETTINGS)
@given(RNG)
def test_multi_probe_cells(rng):
    opts = build_options(rng)
    cases = [build_valid(rng) for _ in range(rng.randrange(1, 7))]
    text = "\n".join(line for line, _ in cases)
    note(f"text={text!r}")
    spec = parse_spec(text, guru=True)
    # body line k is line k + 1 of the cell
    assert spec.probes == tuple(
        dataclasses.replace(p, lineno=k) for k, (_, p) in enumerate(cases, start=2)
    )
    check_script(spec, opts)


# -- malformed specs: mutations of valid ones, and garbage ----------------------------------

NASTY = list(" \t:.+_-*?[]{}()\"';`$%#\\=,/@!<>|&^~\r\n\x00\x1b\x7f") + [
    "\u0131",
    "\u0435",
    "\u2024",
    "\uff46",
    "\uff1a",
    "\u00a0",
    "\u200b",
    "\u2028",
    "\ufeff",
    "0x",
    ".return",
    ".call+return",
    ":int",
    ":str",
    "%{",
    "%}",
    "$(",
    "probe begin{}",
    "-e",
]


def mutate(rng: random.Random) -> str:
    line, _ = build_valid(rng)
    for _ in range(rng.randrange(1, 5)):
        pos = rng.randrange(0, len(line) + 1)
        op = rng.choice(["insert", "delete", "replace"])
        if op == "delete":
            line = line[:pos] + line[pos + rng.randrange(1, 4) :]
            continue
        chunk = rng.choice(NASTY) if rng.random() < 0.7 else rand_ident(rng)
        line = line[:pos] + chunk + line[pos + (op == "replace") :]
    return line


def parse_or_error(first_line: str, body: str, guru: bool, opts: ScriptOptions) -> None:
    try:
        spec = parse_spec(body, guru=guru, first_line=first_line)
    except SpecError as err:
        check_error(err)
        lines = [first_line] + body.split("\n")
        if err.source:  # the line it names is one of the input lines, same length
            shown = lines[err.line - 1].split("\n")[0]
            # (a CRLF line's final \r is dropped before parsing)
            assert len(err.source) in (len(shown), len(shown.removesuffix("\r")))
        return
    refs = [r for p in spec.probes for r in p.btf_refs]
    if refs:
        # kernel names (issue 14) wait for the target's BTF (pipeline.resolve_btf): they are
        # identifier paths, and no script is generated while one is unresolved
        assert all(
            re.fullmatch(r"[A-Za-z_]\w*(?:(?:->|\.)[A-Za-z_]\w*)*", r.path, re.ASCII) for r in refs
        )
        with pytest.raises(SpecError, match="not resolved from BTF"):
            generate(spec, opts)
        return
    check_script(spec, opts)


@settings(max_examples=4000, **SETTINGS)
@given(RNG)
def test_mutated_specs_parse_or_point_inside_the_line(rng):
    line = mutate(rng)
    in_body, guru, opts = rng.random() < 0.5, rng.random() < 0.5, build_options(rng)
    note(f"line={line!r}")
    if in_body:
        parse_or_error("", line, guru, opts)
    else:
        parse_or_error(line, "", guru, opts)


@settings(max_examples=1800, **SETTINGS)
@given(st.text(max_size=40) | st.text(alphabet="".join(NASTY[:40]) + "abc0x", max_size=30), RNG)
def test_garbage_parses_or_points_inside_the_line(text, rng):
    guru, opts = rng.random() < 0.5, build_options(rng)
    parse_or_error(text, "", guru, opts)
    parse_or_error("", text, guru, opts)
