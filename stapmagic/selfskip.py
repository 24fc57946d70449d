"""Not recording stapmagic's own transport (issue 13 item 6; `--include-self` turns it off).

An idle target's `vfs_read` rows were almost all the processes carrying stap's output:
stapio, staprun, stapsh and, on an ssh target, the ssh session above stapsh. The generated
script skips them in two ways:
- by name, stap's own tools (stapio, staprun*, stapsh): the probes are armed while staprun
  still loads the module, before `begin` runs;
- by pid, what the `begin` probe (it runs in stapio) finds walking up from stapio:
  stap's tools (stap, staprun*, stapio), and only above stap's remote shell (stapsh) the
  OpenSSH session processes (sshd-session since OpenSSH 9.8; an older sshd forks a session
  child also named sshd, whose parent is sshd, the listener's is init).
Locally stapio's parent is stap, whose parent is the user's own kernel, shell or ssh session:
the walk stops there (the first process that is not stap's), and an ssh session that did not
start stapsh (a user who ran staprun from their own login) is theirs, never skipped.
"""

from __future__ import annotations

# stap's tools: staprun matched as a prefix (a wrapper may exec staprun.distrib, as the lab's).
STAP_TOOLS = ("stap", "stapio", "staprun", "stapsh")
REMOTE_SHELL = "stapsh"
SSH_SESSION = ("sshd-session",)
# Walk limit: stapio, staprun (wrapper and real), stap or stapsh, two ssh session processes.
MAX_DEPTH = 8
GLOBAL = "__sm_self"
# The message line naming what is skipped (pid:name ...), so a run says what it left out.
SELF_LINE = "stapmagic: not recording its own transport (--include-self does):"


def _is_tool(var: str, *, names: tuple[str, ...]) -> str:
    return " || ".join(
        f'substr({var}, 0, {len(n)}) == "{n}"' if n == "staprun" else f'{var} == "{n}"'
        for n in names
    )


def guard() -> str:
    """The handler line that drops an event of the transport (after the stapio guard)."""
    by_name = _is_tool("execname()", names=tuple(n for n in STAP_TOOLS if n != "stap"))
    return f"if (pid() in {GLOBAL} || {by_name}) next  # stapmagic's transport (--include-self)"


def global_line() -> str:
    return f"global {GLOBAL}[{MAX_DEPTH}]"


def begin_comments() -> list[str]:
    return [
        "# stapmagic's own transport: stapio and its ancestors that are stap's, and the ssh",
        "# session above stapsh (begin runs in stapio; task_* need no kernel debuginfo)",
    ]


def begin_body() -> list[str]:
    """The walk up from stapio; it stops at the first process that is not stapmagic's."""
    tools = _is_tool("name", names=STAP_TOOLS)
    ssh = " || ".join(f'name == "{n}"' for n in SSH_SESSION)
    return [
        "t = task_current()",
        "remote = 0  # above stapsh: the ssh session that carries it",
        f"for (i = 0; i < {MAX_DEPTH} && t; i++) {{",
        "\tname = task_execname(t)",
        f"\tours = {tools}",
        f'\tssh = {ssh} || (name == "sshd" && task_execname(task_parent(t)) == "sshd")',
        "\tif (!ours && !(remote && ssh))",
        "\t\tbreak",
        f'\tif (name == "{REMOTE_SHELL}")',
        "\t\tremote = 1",
        f"\t{GLOBAL}[task_pid(t)] = 1",
        '\tskipped .= sprintf(" %d:%s", task_pid(t), name)',
        "\tt = task_parent(t)",
        "}",
        f'printf("{SELF_LINE}%s\\n", skipped)',
    ]
