"""diagnose.py against SystemTap's real messages.

The reference .stderr files (captured from real stap 4.8 / 5.1 runs, copied verbatim into
tests/fixtures/reference/) are fed verbatim, found by the `reference` fixture (tests/conftest.py).
Messages without a captured run are built from the format strings in SystemTap's source (file
named next to each).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from stapmagic.diagnose import Counters, Diagnosis, counters, diagnose, render

V48 = "stap-4.8-linux-6.1"
V51 = "stap-5.1-linux-6.12"


@pytest.fixture
def reference_lines(reference: Callable[[str], Path]) -> Callable[[str], list[str]]:
    """`reference_lines(name)`: the lines of a reference capture."""
    return lambda name: reference(name).read_text(encoding="utf-8").splitlines()


def codes(ds: list[Diagnosis]) -> list[str]:
    return [d.code for d in ds]


def by_code(ds: list[Diagnosis], code: str) -> Diagnosis:
    found = [d for d in ds if d.code == code]
    assert len(found) == 1, codes(ds)
    return found[0]


# --------------------------------------------------------------------------------------
# the real captures


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"{V48}/4a_first.stderr", ["asmlinkage_elided"]),
        (f"{V48}/4b_return.stderr", []),
        (f"{V48}/4d_registers.stderr", []),
        (f"{V48}/4e_module.stderr", []),
        (f"{V48}/4e_module_nomodule.stderr", ["no_match"]),
        (f"{V48}/4e_statement_g.stderr", []),
        (f"{V48}/4e_statement_nog.stderr", ["need_guru"]),
        (f"{V48}/4f_kernel_function.stderr", ["debuginfo_missing"]),
        (f"{V48}/4f_nosuchfunc.stderr", ["no_match"]),
        (
            f"{V48}/4f_wildcard_run.stderr",
            ["registration_error", "errors_skipped", "transport_failures"],
        ),
        (f"{V48}/4h_cached.stderr", ["asmlinkage_elided"]),
        (f"{V48}/5a_staprun.stderr", []),
        (f"{V48}/9_no_systemmap.stderr", ["symbols_missing"]),
        (f"{V48}/9_stock_runtime.stderr", ["asmlinkage_elided", "pass4_failed"]),
        (f"{V51}/r_a.stderr", []),
        (f"{V51}/r_e.stderr", []),
        (f"{V51}/remote_ssh_loop_late.stderr", ["registration_error"]),
        (f"{V51}/remote_ssh_stapsh_a.stderr", ["asmlinkage_elided"]),
        (f"{V51}/remote_ssh_stapsh_a_vp.stderr", ["asmlinkage_elided"]),
        (
            f"{V51}/remote_ssh_stapsh_s_a.stderr",
            ["asmlinkage_elided", "uprobe_unregister", "command_killed"],
        ),
    ],
)
def test_reference_diagnoses(name, expected, reference_lines):
    lines = reference_lines(name)
    ds = diagnose(lines)
    assert codes(ds) == expected
    for d in ds:  # stap's own text is kept verbatim
        assert d.detail and all(line in lines for line in d.detail), d
        assert d.summary and d.severity in ("error", "warning", "info")


def test_pty_line_endings_and_colours_do_not_matter(reference_lines):
    lines = reference_lines(f"{V48}/4f_nosuchfunc.stderr")
    pty = [line + "\r" for line in lines]
    assert diagnose(pty) == diagnose(lines)
    coloured = [
        line.replace("semantic error:", "\x1b[01;31m\x1b[Ksemantic error:\x1b[m\x1b[K")
        for line in lines
    ]
    assert codes(diagnose(coloured)) == ["no_match"]


def test_no_match_lists_the_similar_functions(reference_lines):
    d = by_code(diagnose(reference_lines(f"{V48}/4f_nosuchfunc.stderr")), "no_match")
    assert d.severity == "error"
    assert d.similar == (
        "in_lock_functions",
        "in_sched_functions",
        "io_wake_function",
        "trace_function",
        "call_function_init",
    )
    assert d.probes == ("no_such_function_xyz",)
    assert "no_such_function_xyz" in d.summary and "in_lock_functions" in d.summary
    assert (
        "semantic error: no match (similar functions: in_lock_functions, in_sched_functions, "
        "io_wake_function, trace_function, call_function_init)"
    ) in d.detail
    assert any('source: probe kprobe.function("no_such_function_xyz")' in x for x in d.detail)


def test_module_function_without_module_symbols(reference_lines):
    d = by_code(diagnose(reference_lines(f"{V48}/4e_module_nomodule.stderr")), "no_match")
    assert d.probes == ("ext4_file_open",)
    assert d.similar[0] == "bad_file_open" and len(d.similar) == 5
    assert "module" in d.summary


def test_debuginfo_missing_points_to_kprobe_function(reference_lines):
    ds = diagnose(reference_lines(f"{V48}/4f_kernel_function.stderr"))
    d = by_code(ds, "debuginfo_missing")
    assert "kprobe.function" in d.summary and "%%kprobe" in d.summary
    assert d.probes == ("tcp_v4_connect",)
    assert d.detail[0].startswith("WARNING: cannot find module kernel debuginfo")
    assert "semantic error: no match" in d.detail  # the consequence is kept with it


def test_symbol_table_missing_says_how_to_copy_kallsyms(reference_lines):
    ds = diagnose(reference_lines(f"{V48}/9_no_systemmap.stderr"))
    d = by_code(ds, "symbols_missing")
    assert "cp /proc/kallsyms /boot/System.map-$(uname -r)" in d.summary
    assert d.detail == ("WARNING: Kernel function symbol table missing [man warning::symbols]",)
    assert "no_match" not in codes(ds)  # the root cause, not its symptom


def test_absolute_statement_needs_guru(reference_lines):
    d = by_code(diagnose(reference_lines(f"{V48}/4e_statement_nog.stderr")), "need_guru")
    assert "--guru" in d.summary and d.severity == "error"
    assert any(
        "absolute statement probe in unprivileged script; need stap -g" in x for x in d.detail
    )


def test_wildcard_run_registration_skips_and_transport(reference_lines):
    lines = reference_lines(f"{V48}/4f_wildcard_run.stderr")
    ds = diagnose(lines)
    reg = by_code(ds, "registration_error")
    assert reg.count == 6 and reg.severity == "warning"
    assert reg.probes == (
        "tcp_v4_init",
        "tcp_tasklet_init",
        "tcp_metrics_init",
        "tcp_init",
        "tcp_congestion_default",
        "tcp_bpf_v4_build_proto",
    )
    assert "rc -22" in reg.summary and "__init" in reg.summary
    tf = by_code(ds, "transport_failures")
    assert tf.count == 3 and "-s" in tf.summary and tf.severity == "warning"
    sk = by_code(ds, "errors_skipped")
    assert sk.count == 1 and "1 probe hit" in sk.summary
    assert counters(lines) == Counters(errors=0, skipped_probes=1, transport_failures=3, warnings=8)


def test_module_loaded_too_late_rc_4(reference_lines):
    d = by_code(
        diagnose(reference_lines(f"{V51}/remote_ssh_loop_late.stderr")), "registration_error"
    )
    assert d.count == 2 and d.probes == ("loop_configure", "lo_open")
    assert "rc 4" in d.summary and "load the module" in d.summary


def test_pass4_failure_shows_the_first_gcc_error(reference_lines):
    d = by_code(diagnose(reference_lines(f"{V48}/9_stock_runtime.stderr")), "pass4_failed")
    assert "passing argument 2 of" in d.summary
    assert "[-Werror" not in d.summary
    assert d.detail[-1] == "Pass 4: compilation failed.  [man error::pass4]"
    assert d.detail[1].startswith(
        "/share/stock-runtime/stp_task_work.c:107:40: error: passing argument 2"
    )
    assert "In function" in d.detail[0]


def test_uprobe_unregister_needs_the_define(reference_lines):
    ds = diagnose(reference_lines(f"{V51}/remote_ssh_stapsh_s_a.stderr"))
    d = by_code(ds, "uprobe_unregister")
    assert "-D STAPCONF_UPROBE_UNREGISTER_EXPORTED" in d.summary
    assert d.detail == ("ERROR: Can't resolve uprobe_unregister!",)
    assert by_code(ds, "command_killed").severity == "info"


def test_asmlinkage_warning_is_harmless(reference_lines):
    lines = reference_lines(f"{V48}/4a_first.stderr")
    d = by_code(diagnose(lines), "asmlinkage_elided")
    assert d.severity == "info" and "Harmless" in d.summary
    assert d.detail[0].startswith(
        "WARNING: Eliding side-effect-free expression : identifier 'asmlinkage'"
    )
    assert len(d.detail) == 3  # with stap's source and caret lines
    assert counters(lines) == Counters(warnings=1)


@pytest.mark.parametrize(
    "name",
    [
        f"{V48}/{n}"
        for n in (
            "4a_first.stderr",
            "4f_wildcard_run.stderr",
            "9_stock_runtime.stderr",
            "4e_statement_nog.stderr",
        )
    ]
    + [f"{V51}/{n}" for n in ("remote_ssh_stapsh_s_a.stderr", "remote_ssh_stapsh_a_vp.stderr")],
)
def test_render_keeps_stap_text(name, reference_lines):
    lines = reference_lines(name)
    for d in diagnose(lines):
        text = render(d)
        assert text.startswith(f"[{d.severity}] {d.summary}")
        for line in d.detail:
            assert line in text
        assert str(d) == text


# --------------------------------------------------------------------------------------
# messages built from SystemTap's format strings


def test_not_root_staprun():
    # staprun/staprun_funcs.c assert_stap_module_permissions(): err(...) adds "ERROR: "
    lines = [
        "ERROR: You are trying to run systemtap as a normal user.",
        'You should either be root, or be part of group "stapusr" and possibly the groups '
        '"stapsys" or "stapdev".',
    ]
    d = by_code(diagnose(lines), "not_privileged")
    assert d.severity == "error" and d.detail == tuple(lines)
    assert "root" in d.summary and "stapdev" in d.summary and "--target lab" in d.summary


def test_not_root_stap():
    # session.cxx: a user in neither group
    lines = [
        "You are trying to run systemtap as a normal user.",
        'You should either be root, or be part of the group "stapusr" and possibly one of the '
        'groups "stapsys" or "stapdev".  [man stap]',
    ]
    assert codes(diagnose(lines)) == ["not_privileged"]


def test_stapusr_without_stapdev():
    # session.cxx enable_auto_server(), client-nss.cxx
    lines = [
        "--privilege=stapusr was automatically selected because you are a member of the group "
        "stapusr.  [man stap]",
        "For users with the privilege level stapusr, the module created by compiling your script "
        "must be signed by a trusted systemtap compile-server.  [man stap-server]",
        "Unable to find a suitable compile server.  [man stap-server]",
    ]
    d = by_code(diagnose(lines), "not_privileged")
    assert "stapusr" in d.summary
    assert d.detail == tuple(lines[1:])


def test_missing_debuginfo_semantic_error():
    # dwflpp.cxx setup_kernel()
    lines = [
        "semantic error: missing x86_64 kernel/module debuginfo [man warning::debuginfo] under "
        "'/lib/modules/6.1.0-50-amd64/build'",
        "Pass 2: analysis failed.  [man error::pass2]",
    ]
    assert codes(diagnose(lines)) == ["debuginfo_missing"]


def test_probe_overhead():
    # tapsets.cxx common_probe_entryfn_epilogue(), _stp_error adds "ERROR: "
    lines = [
        "ERROR: probe overhead (500123456 cycles) exceeded threshold (500000000 cycles) "
        "in last 1000000000 cycles"
    ]
    d = by_code(diagnose(lines), "probe_overhead")
    assert d.severity == "error" and "STP_NO_OVERLOAD" in d.summary
    assert counters(lines).errors == 1


def test_maxaction():
    # translate.cxx STAP_T_04 through _stp_softerror("%s near %s", ...)
    lines = [
        "ERROR: MAXACTION exceeded near identifier 'printf' at <input>:1:47",
        "WARNING: Number of errors: 1, skipped probes: 0",
        "Pass 5: run failed.  [man error::pass5]",
    ]
    ds = diagnose(lines)
    assert codes(ds) == ["maxaction", "errors_skipped"]
    assert "-D MAXACTION=" in ds[0].summary
    assert "1 runtime error" in ds[1].summary
    assert counters(lines) == Counters(errors=1, skipped_probes=0, transport_failures=0, warnings=1)


def test_skipped_too_many():
    # tapsets.cxx common_probe_entryfn_epilogue()
    lines = [
        "ERROR: Skipped too many probes, check MAXSKIPPED or try again with stap -t for more "
        "details.",
        "WARNING: Number of errors: 0, skipped probes: 101",
    ]
    ds = diagnose(lines)
    assert codes(ds) == ["skipped_too_many", "errors_skipped"]
    assert "-D MAXSKIPPED=" in ds[0].summary
    assert ds[1].count == 101
    assert counters(lines).skipped_probes == 101


def test_transport_failures_counted_across_lines():
    lines = [
        "WARNING: There were 12 transport failures. Try stap -s to increase the buffer size "
        "from 16.",
        "WARNING: There were 3 transport failures. Try stap -s to increase the buffer size "
        "from 16.",
    ]
    ds = diagnose(lines)
    assert [d.count for d in ds] == [12, 3]
    assert counters(lines).transport_failures == 15


def test_lost_relay_messages_counted_as_lost_output():
    # staprun/relay.c, verbatim from a lab run (ksys_read under dd bs=1, stap 5.1, TCG)
    lines = [
        "20000 bytes (20 kB, 20 KiB) copied, 5.02121 s, 4.0 kB/s",
        "WARNING: There were 2054 lost messages and 0 lost bytes.",
    ]
    ds = diagnose(lines)
    assert codes(ds) == ["transport_failures"]
    assert ds[0].count == 2054 and ds[0].severity == "warning"
    assert "records are missing" in ds[0].summary
    assert counters(lines) == Counters(
        errors=0, skipped_probes=0, transport_failures=2054, warnings=1
    )


def test_fatal_registration_error():
    # translate.cxx emit_module_init(): _stp_error("probe %s registration error ... (rc %d)")
    lines = [
        'ERROR: probe kprobe.function("foo") registration error [man warning::pass5] (rc -2)',
        "Pass 5: run failed.  [man error::pass5]",
    ]
    d = by_code(diagnose(lines), "registration_error")
    assert d.severity == "error" and d.probes == ("foo",) and "rc -2" in d.summary


def test_kernel_headers_missing():
    # session.cxx parse_kernel_config()
    lines = [
        'Checking "/lib/modules/6.12.0-1-amd64/build/.config" failed with error: No such file '
        "or directory"
    ]
    d = by_code(diagnose(lines), "kernel_headers_missing")
    assert "linux-headers-$(uname -r)" in d.summary


@pytest.mark.parametrize(
    ("why", "hint"),
    [
        ("Operation not permitted", "lockdown"),
        ("Invalid module format", "headers"),
        ("Key was rejected by service", "Secure Boot"),
        ("File exists", "staprun -d"),
    ],
)
def test_module_insert_failed(why, hint):
    # staprun/staprun.c insert_module(), moderror() in staprun_funcs.c
    lines = [f"ERROR: Couldn't insert module '/tmp/stapXyZ/stap_1234_567.ko': {why}"]
    d = by_code(diagnose(lines), "module_insert_failed")
    assert why in d.summary and hint in d.summary


def test_other_elided_expression_is_a_warning():
    lines = [
        "WARNING: Eliding side-effect-free expression : identifier 'x' at <input>:1:20",
        " source: probe begin { x; exit() }",
        "                       ^",
    ]
    d = by_code(diagnose(lines), "elided_expression")
    assert d.severity == "warning" and "'x'" in d.summary


def test_unrecognised_failure_falls_back_to_stap_text():
    lines = [
        "semantic error: unresolved target-symbol expression: identifier '$sk' at <input>:1:40",
        '        source: probe kprobe.function("tcp_v4_connect") { print($sk) }',
        "                                                              ^",
        "",
        "Pass 2: analysis failed.  [man error::pass2]",
    ]
    ds = diagnose(lines)
    assert codes(ds) == ["stap_failed"]
    assert "pass 2" in ds[0].summary and "unresolved target-symbol expression" in ds[0].summary
    assert ds[0].detail[0] == lines[0]


def test_nothing_to_say():
    assert diagnose([]) == []
    assert counters([]) == Counters()
    assert diagnose(["hello from the -c workload", "@@sm1\t0\t1\t@@"]) == []


def test_counters_prefer_stap_s_own_error_count():
    lines = [
        "ERROR: division by 0 near operator '/' at <input>:1:30",
        "ERROR: division by 0 near operator '/' at <input>:1:30",
        "WARNING: Number of errors: 5, skipped probes: 2",
    ]
    assert counters(lines) == Counters(errors=5, skipped_probes=2, transport_failures=0, warnings=1)
    assert counters(lines[:2]).errors == 2
