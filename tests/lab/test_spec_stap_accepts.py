"""Generated scripts are accepted by the lab's SystemTap: `stap -p2` (parse + elaborate against
the guest's kernel symbols, no compile) on a fixed-seed sample of valid specs and options.

The specs come from the property tests' grammar builders (tests/test_spec_properties.py); only
the function names are swapped for real kernel symbols, since SystemTap resolves
kprobe.function("F") against the System.map at pass 2 (a random name would be "no match").
Pass 2 runs in the lab's chroot with `-r RELEASE` (the chroot holds that release's System.map):
the same stap, tapsets and symbols as `--remote`, without the ssh handshake per script.
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from pathlib import Path

import pytest

from stapmagic.errors import OptionError
from stapmagic.script import REGS_ALLOWED, Script, ScriptOptions, generate
from stapmagic.spec import ARG_TYPES, MAX_ARGS, Arg, Probe, Spec, parse_spec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_spec_properties import build_options, build_valid  # noqa: E402

SEED = 20240607
SAMPLE = 24
# Kernel functions of the guest (vmlinux), and one module function (ext4 is loaded at boot).
FUNCTIONS = (
    "tcp_v4_connect",
    "vfs_read",
    "vfs_write",
    "do_sys_openat2",
    "tcp_sendmsg",
    "inet_csk_accept",
    "ip_rcv",
    "__x64_sys_getpid",
)
MODULE_FUNCTION = ("ext4", "ext4_file_open")


@pytest.fixture
def p2(lab):
    """Runs `stap -p2 [-g] -e SCRIPT` in the lab's chroot; returns the CompletedProcess."""
    prefix = lab.stap_argv()
    remote = [a for a in prefix if a.startswith("--remote=")]
    assert len(remote) == 1, prefix
    state = lab.status()
    assert state is not None
    base = [a for a in prefix if a not in remote] + ["-p2", "-r", str(state["release"])]

    def go(script: Script) -> subprocess.CompletedProcess[str]:
        argv = base + (["-g"] if script.guru else []) + ["-e", script.text]
        return subprocess.run(  # noqa: S603
            argv,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    return go


def system_map_names(lab) -> set[str]:
    state = lab.status()
    path = Path(str(state["root"])) / f"usr/lib/debug/boot/System.map-{state['release']}"
    return {line.split()[2] for line in path.read_text().splitlines() if len(line.split()) >= 3}


def real_names(probe: Probe, rng: random.Random) -> Probe:
    if probe.function is None:
        return probe  # an absolute address: pass 2 takes any 64-bit value under -g
    if probe.module is not None:
        module, function = MODULE_FUNCTION
        return dataclasses.replace(probe, module=module, function=function)
    return dataclasses.replace(probe, function=rng.choice(FUNCTIONS))


def draw_options(rng: random.Random) -> ScriptOptions:
    # build_options may ask for values the options refuse (that refusal is the contract).
    while True:
        try:
            return build_options(rng)
        except OptionError:
            continue


def sample() -> list[tuple[Spec, ScriptOptions]]:
    rng = random.Random(SEED)
    cases = []
    for _ in range(SAMPLE):
        n = 1 if rng.random() < 0.6 else rng.randrange(2, 5)
        probes = tuple(real_names(build_valid(rng)[1], rng) for _ in range(n))
        cases.append((Spec(probes), draw_options(rng)))
    return cases


def assert_accepted(p2, script: Script) -> None:
    r = p2(script)
    assert r.returncode == 0, f"stap -p2 refused the generated script:\n{script.text}\n{r.stderr}"
    assert "semantic error" not in r.stderr and "parse error" not in r.stderr, r.stderr


def test_the_names_are_in_the_guest_system_map(lab):
    names = system_map_names(lab)
    assert set(FUNCTIONS) | {MODULE_FUNCTION[1]} <= names


def test_refusal_is_detected(p2):
    """The check can fail: a misspelt function is refused at pass 2."""
    script = generate(parse_spec("", first_line="tcp_v4_connectt"), ScriptOptions())
    r = p2(script)
    assert r.returncode != 0
    assert "no match" in r.stderr


def test_sampled_specs_are_accepted(p2):
    refused = []
    for spec, opts in sample():
        script = generate(spec, opts)
        r = p2(script)
        if r.returncode != 0 or "semantic error" in r.stderr or "parse error" in r.stderr:
            refused.append(f"{script.text}\n{r.stderr}")
    assert not refused, f"stap -p2 refused {len(refused)} of {SAMPLE}:\n" + "\n".join(refused)


def _widest_probe(kind: str) -> Probe:
    types = [ARG_TYPES[i % len(ARG_TYPES)] for i in range(MAX_ARGS)]
    args = tuple(Arg(f"a_{i}", t, i) for i, t in enumerate(types, 1))
    return Probe(
        function="tcp_v4_connect",
        module=None,
        address=None,
        kind=kind,
        rettype=None if kind == "entry" else "int",  # type: ignore[arg-type]
        args=args if kind != "return" else (),
        text="",
        label="tcp_v4_connect",
    )


@pytest.mark.parametrize("kind", ["entry", "return", "pair"])
def test_widest_records_are_accepted(p2, kind):
    """16 arguments of every type plus all registers: printf is split at 32 arguments."""
    opts = ScriptOptions(count=3, duration=0.5, regs=REGS_ALLOWED, filter_pid=True, string_max=511)
    assert_accepted(p2, generate(Spec((_widest_probe(kind),)), opts))


@pytest.mark.parametrize(
    "field, values",
    [
        ("count", [1, 10**9, 10**15, 2**62, 2**63 - 1, 2**63, 2**64]),
        ("duration", [0.0001, 1.0, 86400.0, 86400.001, 1e6]),
        ("string_max", [1, 511]),
    ],
)
def test_option_extremes_are_refused_or_accepted(p2, field, values):
    """Each value is refused with an OptionError or gives a script stap accepts; none
    reaches stap as a script it rejects (or, for -n, silently misreads)."""
    spec = parse_spec("", first_line="tcp_v4_connect sk:ptr")
    for value in values:
        try:
            opts = ScriptOptions(**{field: value})
        except OptionError as exc:
            assert str(exc)
            continue
        script = generate(spec, opts)
        assert_accepted(p2, script)
        if field == "count":
            # stap reads 2**63 as -2**63: `k > N` would then drop every event.
            assert value < 2**63, f"-n {value} is accepted but stap reads it as negative"
