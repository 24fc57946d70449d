"""Issue 14: a function with no arguments reads every register parameter, a .return without
a type is typed, NAME:TYPE is checked against BTF (a note), and a recorded cell replays
without the target's BTF. The lab kernel's BTF (the fixtures) stands in for the target's."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from test_btf import ext4, vmlinux
from test_recording import SPEC, fake, no_stap  # noqa: F401 (fixtures)

from stapmagic import kbtf, pipeline
from stapmagic.errors import ReplayError

LOOKUPS: list[list[str]] = []


@pytest.fixture
def lab_btf(monkeypatch):
    LOOKUPS.clear()

    def lookup(target, modules):
        LOOKUPS.append(list(modules))
        return kbtf.KernelBTF(vmlinux())

    monkeypatch.setattr(pipeline, "target_btf", lookup)


@pytest.fixture
def no_btf(monkeypatch):
    def lookup(target, modules):
        raise kbtf.NoBTF("the target kernel has no BTF (/sys/kernel/btf/vmlinux: No such file)")

    monkeypatch.setattr(pipeline, "target_btf", lookup)


def prepare(line, **opts):
    return pipeline.prepare(line, "", pipeline.ProbeOptions(dry_run=True, **opts))


def columns(run, i=0):
    return [(c.name, c.kind) for c in run.script.probes[i].columns]


def run_cell(ip, text):
    result = ip.run_cell(text)
    return result.error_before_exec or result.error_in_exec


# -- 1. a bare function ----------------------------------------------------------------------


def test_bare_function_reads_every_register_parameter(lab_btf):
    run = prepare("tcp_v4_connect")
    assert columns(run) == [("sk", "hex"), ("uaddr", "hex"), ("addr_len", "int")]
    text = run.script_text
    assert "pointer_arg(1)" in text and "pointer_arg(2)" in text and "int_arg(3)" in text


def test_bare_function_c_string_and_bool(lab_btf):
    run = prepare("do_sys_openat2")
    assert columns(run) == [("dfd", "int"), ("filename", "str"), ("how", "hex")]
    assert "__sm_cstr(pointer_arg(2)" in run.script_text
    run = prepare("___gnet_stats_copy_basic")
    assert columns(run)[-1] == ("running", "uint")


def test_bare_function_enum_parameter_is_named(lab_btf):
    run = prepare("tcp_v4_send_reset")
    assert columns(run)[-1] == ("reason", "uint")
    (enum,) = run.spec.probes[0].enums
    column, names = enum
    assert column == "reason" and (0, "SK_RST_REASON_NOT_SPECIFIED") in names


def test_enum_column_is_categorical_with_unknown_values_kept(lab_btf):
    from stapmagic import frames

    probe = prepare("tcp_v4_send_reset").spec.probes[0]
    import pandas as pd

    df = pd.DataFrame(
        {
            "probe": pd.Categorical(["tcp_v4_send_reset"] * 3),
            "reason": pd.array([0, 1, 9999], "UInt64"),
        }
    )
    out = frames.enum_names(df, [probe])
    assert isinstance(out["reason"].dtype, pd.CategoricalDtype)
    assert list(out["reason"].astype(str)) == [
        "SK_RST_REASON_NOT_SPECIFIED",
        "SK_RST_REASON_NO_SOCKET",
        "9999",
    ]


def test_parameters_past_the_registers_are_said(lab_btf):
    run = prepare("FSE_decompress_wksp")
    (note,) = [n for p in run.spec.probes for n in p.notes if "wkspSize" in n]
    assert "past the 6 argument registers" in note


def test_bare_function_without_btf_is_the_seed_probe(no_btf):
    run = prepare("tcp_v4_connect")
    assert columns(run) == []
    assert not run.spec.probes[0].notes


def test_reserved_parameter_name_becomes_a_column_with_a_suffix(lab_btf):
    run = prepare("irq_set_affinity_notifier")  # (unsigned int irq, ...) : irq is fine
    assert columns(run)[0][0] == "irq"
    run = prepare("cpufreq_cpu_get")  # (unsigned int cpu)
    assert columns(run) == [("cpu_arg", "uint")]
    assert any("cpu_arg" in n for n in run.spec.probes[0].notes)


# -- 2. .return typed from BTF ---------------------------------------------------------------


def test_return_without_type_is_the_btf_type(lab_btf):
    run = prepare("tcp_v4_connect.return")
    assert columns(run) == [("retval", "int"), ("errno", "errno")]
    assert "(r << 32) >> 32" in run.script_text


def test_void_function_return_has_no_retval(lab_btf):
    run = prepare("tcp_v4_send_reset.return")
    assert columns(run) == []
    assert "returnval" not in run.script_text


def test_explicit_return_type_wins(lab_btf):
    run = prepare("tcp_v4_connect.return:long")
    assert columns(run) == [("retval", "int"), ("errno", "errno")]
    assert "(r << 32) >> 32" not in run.script_text


def test_latency_pairs_with_the_btf_return_type(lab_btf):
    run = prepare("tcp_v4_connect", latency=True)
    assert ("retval", "int") in columns(run)
    assert "(r << 32) >> 32" in run.script_text


def test_return_without_btf_is_long(no_btf):
    run = prepare("tcp_v4_connect.return")
    assert "(r << 32) >> 32" not in run.script_text


# -- 3. NAME:TYPE checked against BTF --------------------------------------------------------


def test_seed_style_disagreement_is_said_once(ip, capsys, lab_btf):
    err = run_cell(ip, "%%kprobe --dry-run tcp_v4_connect sk:ptr uaddr:ptr len:uint")
    assert err is None, err
    out = capsys.readouterr().out
    note = "argument 3 is `int addr_len` in this kernel; `len:uint` reads it as unsigned"
    assert out.count(note) == 1, out
    assert "argument 1" not in out and "argument 2" not in out


def test_seed_style_agreeing_says_nothing(lab_btf):
    run = prepare("tcp_v4_connect sk:ptr uaddr:ptr len:int")
    assert not run.spec.probes[0].notes


def test_seed_style_without_btf_says_nothing(ip, capsys, no_btf):
    err = run_cell(ip, "%%kprobe --dry-run tcp_v4_connect sk:ptr uaddr:ptr len:uint")
    assert err is None, err
    assert "in this kernel" not in capsys.readouterr().out


def test_seed_style_on_a_function_missing_from_btf_says_nothing(lab_btf):
    run = prepare("tcp_v4_connectt sk:ptr")
    assert not run.spec.probes[0].notes


# -- 4. functions missing from BTF -----------------------------------------------------------


@pytest.mark.parametrize("line", ["tcp_v4_connectt", "tcp_v4_connectt.return"])
def test_bare_forms_of_a_function_missing_from_btf_are_refused(ip, lab_btf, line):
    err = run_cell(ip, f"%%kprobe --dry-run {line}")
    assert isinstance(err, UsageError), err
    assert "is not in the kernel's BTF" in str(err) and "NAME:TYPE" in str(err)


@pytest.mark.parametrize(
    ("line", "kallsyms", "refused"),
    [
        # in the kernel but not in BTF: refused, NAME:TYPE wanted
        ("tcp_v4_connectt", ["ffffffff81000000 T tcp_v4_connectt"], True),
        # in no symbol table: left as written, so stap's no-match lists the similar names
        ("tcp_v4_connectt", [], False),
        # in the kernel, in another module: left to the module check that says where it is
        ("ext4:tcp_v4_connect", ["ffffffff81000000 T tcp_v4_connect"], False),
        ("ext4:tcp_v4_connectt", ["ffffffffc0000000 t tcp_v4_connectt\t[ext4]"], True),
    ],
)
def test_a_bare_form_btf_lacks_is_refused_only_for_a_function_the_kernel_has(
    monkeypatch, line, kallsyms, refused
):
    monkeypatch.setattr(
        pipeline, "target_btf", lambda target, modules: kbtf.KernelBTF(vmlinux(), {"ext4": ext4()})
    )
    asked: list[list[str]] = []

    def lookup(target, names):
        asked.append(list(names))
        return kallsyms

    def prepare_live():
        return pipeline.prepare(
            line, "", pipeline.ProbeOptions(target="lab"), lookup=lookup, build=lambda *a: []
        )

    if refused:
        with pytest.raises(pipeline.SpecError, match="is not in the kernel's BTF"):
            prepare_live()
    else:
        try:
            run = prepare_live()
        except pipeline.SpecError as exc:  # the module check's own refusal is fine
            assert "is not in the kernel's BTF" not in str(exc)
            assert "not to module ext4" in str(exc)
        else:
            assert run.spec.probes[0].args == ()  # as written: the seed's meaning
    assert [line.split(":")[-1]] in asked


def test_bare_forms_without_btf_work_as_before(ip, capsys, no_btf):
    assert run_cell(ip, "%%kprobe --dry-run tcp_v4_connect.return") is None
    assert "BTF" not in capsys.readouterr().out


# -- 5. --dry-run shows the prototype --------------------------------------------------------


def test_dry_run_shows_the_prototype(ip, capsys, lab_btf):
    assert run_cell(ip, "%%kprobe --dry-run tcp_v4_connect.return") is None
    out = capsys.readouterr().out
    assert "# int tcp_v4_connect(struct sock *sk, struct sockaddr *uaddr, int addr_len)" in out


# -- 6. a recorded BTF cell replays with no target -------------------------------------------


def test_recorded_btf_cells_replay_without_the_target(
    ip,
    fake,  # noqa: F811
    no_stap,  # noqa: F811
    lab_btf,
    monkeypatch,
    capsys,
):
    import pandas as pd

    for i, cell in enumerate([SPEC, "tcp_v4_connect", "tcp_v4_connect.return"]):
        ip.user_ns.pop("_kprobe", None)
        assert run_cell(ip, f"%%kprobe -q --record r{i}.jsonl -o a {cell}") is None
        recorded = ip.user_ns["_kprobe"].script_text
        said = capsys.readouterr().out

        def forbidden(target, modules):
            raise AssertionError("a replay asked the target for its BTF")

        with monkeypatch.context() as m:
            m.setattr(pipeline, "target_btf", forbidden)
            no_stap()
            assert run_cell(ip, f"%%kprobe -q --replay r{i}.jsonl -o b {cell}") is None
        assert ip.user_ns["_kprobe"].script_text == recorded
        pd.testing.assert_frame_equal(ip.user_ns["a"], ip.user_ns["b"])
        again = capsys.readouterr().out
        if cell == SPEC:
            note = "argument 2 is `struct sockaddr *uaddr` in this kernel; `len:uint` reads it as"
            assert note in said and note in again
        if cell == "tcp_v4_connect":
            assert "pointer_arg(2)" in recorded and "int_arg(3)" in recorded
        monkeypatch.setenv("PATH", str(fake["bin"]) + ":/usr/bin:/bin")


def test_a_damaged_resolution_is_refused(tmp_path):
    import json

    from stapmagic import recording

    header = recording.Header(
        kind="kprobe",
        spec="f",
        options={},
        script="s",
        argv=["stap"],
        target="local",
        kernel_release="k",
        stap_version="v",
        started=0.0,
        btf=[
            {
                "label": "f",
                "args": [["a;b", "int", 1]],
                "rettype": None,
                "ret_typed": False,
                "notes": [],
                "comments": [],
                "enums": [],
            }
        ],
    )
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(header.to_json()) + "\n")
    with pytest.raises(ReplayError, match="an argument must be"):
        recording.load(path)


def test_checking_name_type_asks_the_target_once(lab_btf):
    # a NAME:TYPE cell only checks: once the target's BTF was read, no more round trips
    prepare("tcp_v4_connect sk:ptr uaddr:ptr len:uint")
    prepare("tcp_v4_connect sk:ptr uaddr:ptr len:uint")
    assert len(LOOKUPS) == 1
    prepare("tcp_v4_connect")  # a bare function needs the BTF: asked again
    assert len(LOOKUPS) == 2


def test_a_target_that_cannot_answer_leaves_seed_cells_alone(monkeypatch):
    from stapmagic.errors import LabError

    def down(target, modules):
        raise LabError("the lab is not running")

    monkeypatch.setattr(pipeline, "target_btf", down)
    assert columns(prepare("tcp_v4_connect sk:ptr len:uint")) == [("sk", "hex"), ("len", "uint")]
    assert columns(prepare("tcp_v4_connect")) == []
    with pytest.raises(LabError):
        prepare("tcp_v4_connect addr_len")


def test_recorded_member_paths_replay_without_the_target(
    ip,
    fake,  # noqa: F811
    no_stap,  # noqa: F811
    lab_btf,
    monkeypatch,
):
    cell = (
        "%%kprobe -q --{} r.jsonl --where 'sk->__sk_common.skc_family == 2' "
        "tcp_v4_connect dport=sk->__sk_common.skc_dport"
    )
    assert run_cell(ip, cell.format("record")) is None
    recorded = ip.user_ns["_kprobe"].script_text
    assert "dport" in recorded

    def forbidden(target, modules):
        raise AssertionError("a replay asked the target for its BTF")

    monkeypatch.setattr(pipeline, "target_btf", forbidden)
    no_stap()
    assert run_cell(ip, cell.format("replay")) is None
    assert ip.user_ns["_kprobe"].script_text == recorded


def test_a_damaged_member_read_is_refused(tmp_path):
    import json

    from stapmagic import recording

    field = {"text": "sk->x", "hops": [], "offset": 12, "size": 2, "kind": "code",
             "signed": False, "type_name": "__be16", "bit_offset": None, "bit_size": None,
             "big_endian": True, "length": 0, "enumerators": []}  # fmt: skip
    header = recording.Header(
        kind="kprobe", spec="f", options={}, script="s", argv=["stap"], target="local",
        kernel_release="k", stap_version="v", started=0.0,
        btf=[{"label": "f", "args": [], "rettype": None, "ret_typed": False, "notes": [],
              "comments": [], "enums": [],
              "fields": [{"column": "x", "path": "sk->x", "index": 1, "field": field}]}],
    )  # fmt: skip
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(header.to_json()) + "\n")
    with pytest.raises(ReplayError, match="a member read must be"):
        recording.load(path)
