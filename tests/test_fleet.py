"""Several targets in one cell (issue 16): the target list, the host column, pre-flight, and
the options that mean nothing across hosts. Host side only: tests/lab/test_fleet_lab.py runs two
lab guests."""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd
import pytest

import stapmagic
from stapmagic import fleet, pipeline, records, wire
from stapmagic.errors import OptionError
from stapmagic.script import ScriptOptions, generate
from stapmagic.spec import parse_spec
from stapmagic.targets import Target, parse_target
from stapmagic.targets.fleet import FleetTarget
from stapmagic.targets.lab import LabTarget


@pytest.fixture
def lab_stub(monkeypatch):
    """stapmagic.lab without a VM: each guest's prefix names its own ssh alias."""
    stub = types.ModuleType("stapmagic.lab")
    stub.DEFAULT_GUEST = "lab"

    def alias(name="lab"):
        return "stapmagic-lab" if name == "lab" else f"stapmagic-lab-{name}"

    def stap_argv(require_running=True, name="lab"):
        return ["chroot", "/ROOT", "stap", f"--remote=ssh://{alias(name)}", "-D", "Y"]

    stub.stap_argv = stap_argv
    stub.exec_argv = lambda argv, name="lab": ["lab-exec", name, *argv]
    stub.client_argv = lambda name="lab": ["chroot", "/ROOT"]
    stub.check_guest = lambda name: name
    stub.up_hint = lambda name="lab": (
        "python -m stapmagic.lab up" + ("" if name == "lab" else f" --name {name}")
    )
    monkeypatch.setitem(sys.modules, "stapmagic.lab", stub)
    monkeypatch.setattr(stapmagic, "lab", stub, raising=False)
    return stub


def test_lab_guest_target_is_named_and_reaches_its_own_guest(lab_stub):
    b = parse_target("lab:b")
    assert isinstance(b, LabTarget) and str(b) == "lab:b"
    assert b.stap_prefix()[3] == "--remote=ssh://stapmagic-lab-b"
    assert b.exec_argv(["true"]) == ["lab-exec", "b", "true"]
    assert str(parse_target("lab")) == "lab" and parse_target("lab") != b
    with pytest.raises(OptionError, match="lab guest"):
        parse_target("lab:B;x")


def test_a_target_list_is_one_stap_with_one_remote_per_host(lab_stub):
    t = parse_target("lab, lab:b")
    assert isinstance(t, FleetTarget)
    assert str(t) == "lab,lab:b" and t.hosts == ("lab", "lab:b")
    prefix = t.stap_prefix()
    assert prefix == [
        "chroot",
        "/ROOT",
        "stap",
        "--remote=ssh://stapmagic-lab",
        "--remote=ssh://stapmagic-lab-b",
        "-D",
        "Y",
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("lab,lab", "twice"),
        ("lab,,lab:b", "empty"),
        ("local,lab", "local"),
        ("lab,lab:b,lab", "twice"),
    ],
)
def test_bad_target_lists_are_refused(lab_stub, text, why):
    with pytest.raises(OptionError, match=why):
        parse_target(text)


def test_hosts_that_compile_in_different_places_are_refused_with_the_reason(lab_stub):
    t = parse_target("lab,ssh://root@web1")
    with pytest.raises(OptionError, match="compile"):
        t.stap_prefix(require_stap=False)


def test_a_single_target_generates_the_same_script_as_before():
    spec = parse_spec("tcp_v4_connect sk:ptr")
    one = generate(spec, ScriptOptions())
    assert wire.HOST_EXPR not in one.text
    assert [c.name for c in one.probes[0].columns] == ["sk"]


def test_several_hosts_print_remote_id_in_every_record():
    spec = parse_spec("tcp_v4_connect sk:ptr\nvfs_read.return")
    many = generate(spec, ScriptOptions(host_column=True))
    for probe in many.probes:
        assert probe.columns[-1].name == wire.HOST_FIELD
    records_printed = [ln for ln in many.text.splitlines() if 'printf("' + wire.RECORD_TAG in ln]
    assert records_printed and all(wire.HOST_EXPR in ln for ln in records_printed)


def test_the_host_column_names_the_target_as_written():
    spec = parse_spec("tcp_v4_connect sk:ptr")
    script = generate(spec, ScriptOptions(host_column=True))
    parser = records.RecordParser(script.probes)
    lines = [
        wire.format_record(0, 10, 1, 1, 0, "a", [16, 1], schema=script.probes[0]),
        wire.format_record(0, 11, 1, 1, 0, "a", [17, 0], schema=script.probes[0]),
        wire.format_record(0, 12, 1, 1, 0, "b", [18, 1], schema=script.probes[0]),
    ]
    parser.feed(b"".join(lines))
    parser.close()
    df = fleet.label_hosts(parser.frame(), ("lab", "lab:b", "ssh://root@web1"))
    assert isinstance(df["host"].dtype, pd.CategoricalDtype)
    assert list(df["host"].cat.categories) == ["lab", "lab:b", "ssh://root@web1"]
    assert list(df["host"]) == ["lab:b", "lab", "lab:b"]
    assert list(df["sk"]) == [16, 17, 18]
    assert list(df.columns).index("host") < list(df.columns).index("sk")


# -- pre-flight --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeHost(Target):
    """A stand-in host: its kernel release, and which files the compile side has."""

    kind: ClassVar[str] = "fake"
    label: str = "fake"
    release: str = "6.12.0-1-amd64"
    has: frozenset[str] = field(default_factory=frozenset)
    answers: bool = True
    ran: list[str] = field(default_factory=list, compare=False)

    @classmethod
    def parse(cls, text: str) -> Target | None:
        return None

    @classmethod
    def from_url(cls, url: str | None) -> Target:
        return cls()

    def __str__(self) -> str:
        return self.label

    def stap_prefix(self, *, require_stap: bool = True) -> list[str]:
        return ["stap", f"--remote=ssh://{self.label}"]

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["true"]

    def run(self, argv, *, timeout=60.0, ok_codes=(0,)):
        self.ran.append(" ".join(argv))
        if not self.answers:
            raise OptionError("ssh: connect to host web2 port 22: Connection refused")
        if list(argv) == ["true"]:
            return ""
        assert list(argv) == ["uname", "-r"]
        return self.release + "\n"

    def compile_side_paths(self, paths: Sequence[str]) -> set[str]:
        return {p for p in paths if p in self.has}


def _complete(release: str) -> frozenset[str]:
    return frozenset({f"/lib/modules/{release}/build", f"/boot/System.map-{release}"})


def test_preflight_names_the_host_whose_kernel_has_no_build_tree_with_the_fix():
    good = FakeHost("web1", "6.12.0-1-amd64", _complete("6.12.0-1-amd64"))
    bare = FakeHost("web2", "6.1.0-9-amd64", frozenset({"/boot/System.map-6.1.0-9-amd64"}))
    with pytest.raises(OptionError) as e:
        fleet.preflight(FleetTarget((good, bare)))
    text = str(e.value)
    assert "web2" in text and "6.1.0-9-amd64" in text
    assert "/lib/modules/6.1.0-9-amd64/build" in text
    assert "linux-headers-6.1.0-9-amd64" in text  # the fix
    assert "web1" not in text


def test_preflight_drops_an_unreachable_host_and_keeps_the_others():
    good = FakeHost("web1", "6.12.0-1-amd64", _complete("6.12.0-1-amd64"))
    gone = FakeHost("web2", answers=False)
    ready = fleet.preflight(FleetTarget((good, gone)))
    assert isinstance(ready, FleetTarget)
    assert ready.hosts == ("web1", "web2")  # the frame's categories: every host asked for
    assert [str(m) for m in ready.members] == ["web1"]
    assert ready.stap_prefix() == ["stap", "--remote=ssh://web1"]
    (note,) = ready.notes
    assert "web2" in note and "Connection refused" in note


def test_preflight_refuses_when_no_host_answers():
    with pytest.raises(OptionError, match="no host answers"):
        fleet.preflight(FleetTarget((FakeHost("a", answers=False), FakeHost("b", answers=False))))


def test_preflight_groups_hosts_by_kernel():
    a = FakeHost("a", "6.12.0-1-amd64", _complete("6.12.0-1-amd64"))
    b = FakeHost("b", "6.1.0-9-amd64", _complete("6.1.0-9-amd64"))
    c = FakeHost("c", "6.12.0-1-amd64", _complete("6.12.0-1-amd64"))
    ready = fleet.preflight(FleetTarget((a, b, c)))
    assert ready.kernels == {"6.12.0-1-amd64": ("a", "c"), "6.1.0-9-amd64": ("b",)}


def test_after_a_failed_run_the_host_that_stopped_answering_is_named_with_its_rows():
    alive = FakeHost("web1")
    dead = FakeHost("web2", answers=False)  # answered at the start, gone now
    target = FleetTarget((alive, dead), notes=("web3 did not answer before the run",))
    df = pd.DataFrame(
        {
            "time": [1, 2, 3],
            "host": pd.Categorical(["web1", "web2", "web1"], categories=["web1", "web2"]),
        }
    )
    notes = fleet.host_report(target, df, failed=True)
    assert notes[0] == "web3 did not answer before the run"
    (gone,) = notes[1:]
    assert gone.startswith("web2 stopped answering during the run (")
    assert "Connection refused" in gone and "1 rows, the last at 2" in gone
    assert fleet.host_report(target, df, failed=False) == notes[:1]


# -- options -----------------------------------------------------------------------------------


def test_x_with_several_hosts_is_refused_with_the_reason(ip, lab_stub):
    result = ip.run_cell("%%kprobe --target lab,lab:b -x 42 --dry-run\ntcp_v4_connect")
    err = result.error_in_exec or result.error_before_exec
    assert err is not None and type(err).__name__ == "UsageError"
    assert "-x" in str(err) and "pid" in str(err) and "host" in str(err)


def test_c_help_says_it_runs_on_every_host():
    from stapmagic.options import BY_NAME

    assert "every host" in BY_NAME["command"].help


def test_dry_run_of_a_target_list_shows_both_remotes_and_the_host_field(ip, lab_stub, capsys):
    result = ip.run_cell("%%kprobe --target lab,lab:b --dry-run\ntcp_v4_connect sk:ptr")
    assert result.error_in_exec is None and result.error_before_exec is None
    out = capsys.readouterr().out
    assert "--remote=ssh://stapmagic-lab --remote=ssh://stapmagic-lab-b " in out
    assert f"{wire.HOST_EXPR})" in out


def test_probe_options_carry_the_target_list():
    opts = pipeline.ProbeOptions(target="lab,lab:b", dry_run=True)
    assert fleet.host_names(opts.target) == ("lab", "lab:b")
    assert fleet.host_names("lab") == ()
