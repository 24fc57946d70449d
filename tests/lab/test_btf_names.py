"""Arguments named the kernel's way (issue 14), resolved from the lab kernel's BTF over the
lab's channel: values checked against the workloads."""

from __future__ import annotations

from labutil import workload_pid


def test_parameters_by_their_kernel_names(cell):
    df, err, run = cell(
        '%%kprobe --cmd-only -c "python3 connect_a_few.py 3" tcp_v4_connect addr_len sk'
    )
    assert err is None, (err, run.messages if run else None)
    assert list(df.columns[-2:]) == ["addr_len", "sk"]
    assert list(df["addr_len"]) == [16, 16, 16]  # sizeof(struct sockaddr_in)
    assert all(v >= 1 << 63 for v in df["sk"])  # kernel pointers (top bit set)
    assert "# int tcp_v4_connect(struct sock *sk, struct sockaddr *uaddr, int addr_len)" in (
        run.script_text
    )


def test_a_user_pointer_char_string(cell):
    # do_sys_openat2's `const char *filename` is a user pointer (no __user in BTF): cstr
    # reads it with the user reader because of its address
    df, err, run = cell(
        '%%kprobe --cmd-only -c "python3 read_files.py 3 /etc/hostname" do_sys_openat2 filename dfd'
    )
    assert err is None, (err, run.messages if run else None)
    pid = workload_pid(run)
    mine = df[df["pid"] == pid]
    assert (mine["filename"] == "/etc/hostname").sum() == 3, mine[["filename", "dfd"]]
    assert (mine.loc[mine["filename"] == "/etc/hostname", "dfd"] == -100).all()  # AT_FDCWD


def test_where_drops_rows_in_the_kernel(cell):
    # connect_fail.py: 2 good connects and an AF_UNIX one pass addr_len 16; one passes 8
    df, err, run = cell(
        '%%kprobe --cmd-only -c "python3 connect_fail.py" '
        "--where 'addr_len == 16 && comm == \"python3\"' tcp_v4_connect addr_len"
    )
    assert err is None, (err, run.messages if run else None)
    assert list(df["addr_len"]) == [16, 16, 16]
    df, err, run = cell(
        '%%kprobe --cmd-only -c "python3 connect_fail.py" '
        "--where 'retval < 0' tcp_v4_connect.return:int"
    )
    assert err is None, (err, run.messages if run else None)
    assert list(df["retval"]) == [-97, -22] and list(df["errno"]) == ["EAFNOSUPPORT", "EINVAL"]
