#!/usr/bin/env python3
"""Privilege drop and private-key permissions: `[global] user` / `group` (run as root), an
unknown user at start-up and in --check, non-dumpable processes, keys readable by others
(refused) or by the group (warning)."""

import grp
import os
import pwd
import re
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402
from backend import Backend  # noqa: E402

S = H.Suite("privileges")
tmp = H.make_temp_dir()
certs = H.Certs(tmp)
backend = Backend().start()
CTX = H.client_context(certs.ec_crt)

NOBODY = pwd.getpwnam("nobody")


def binary_for_nobody():
    """FERRY_BIN may sit in a directory only root can enter (a clone under `mktemp -d` is 0700):
    give the runs as nobody a copy they can execute."""
    d = H.make_temp_dir("ferry-it-bin-")
    os.chmod(d, 0o755)
    path = os.path.join(d, "ferry")
    shutil.copy(H.FERRY_BIN, path)
    os.chmod(path, 0o755)
    return path


NOBODY_BIN = binary_for_nobody()
NOGROUP = grp.getgrnam("nogroup")
NO_USER = "ferry-no-such-user"
NO_GROUP = "ferry-no-such-group"


def new_ferry(name, key=None, **global_extra):
    svc = H.service("web", H.free_port(), backend.port, certs.ec_crt, key or certs.ec_key)
    return H.Ferry(tmp, [svc], workers=2, name=name, global_extra=global_extra)


def ferry_cli(*args):
    return H.run([H.FERRY_BIN, *args], timeout=H.bound(30), check=False)


def out(r):
    return (f"exit {r.returncode}\n--- stdout ---\n{r.stdout.decode(errors='replace')}"
            f"--- stderr ---\n{r.stderr.decode(errors='replace')}")


def value_pos(path, key):
    """(line, column) of the value of the first `key = value` line in a TOML file."""
    with open(path) as f:
        for i, line in enumerate(f, 1):
            m = re.match(r"\s*" + re.escape(key) + r"\s*=\s*", line)
            if m:
                return i, m.end() + 1
    raise AssertionError(f"{key} not in {path}")


def status(pid, task=None):
    """/proc/PID/status (or one thread's) as {field: value}."""
    path = f"/proc/{pid}/status" if task is None else f"/proc/{pid}/task/{task}/status"
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def check_ids(f, uid, gid, groups=None):
    """Every thread: real, effective, saved and fs uid/gid are the target, and the
    supplementary groups are `groups` (default: only gid)."""
    groups = [gid] if groups is None else groups
    pid = f.proc.pid
    tasks = os.listdir(f"/proc/{pid}/task")
    f.check(len(tasks) >= 3, f"expected main + 2 workers threads at least, got {tasks}")
    for task in tasks:
        st = status(pid, task)
        f.check(st["Uid"].split() == [str(uid)] * 4, f"thread {task}: Uid {st['Uid']!r}")
        f.check(st["Gid"].split() == [str(gid)] * 4, f"thread {task}: Gid {st['Gid']!r}")
        f.check(st["Groups"].split() == [str(g) for g in groups],
                f"thread {task}: Groups {st['Groups']!r}")


def check_not_dumpable(f):
    # The files in a non-dumpable process's /proc/PID belong to root whatever its uid (proc(5);
    # the directory itself keeps the euid): other processes of the service user cannot ptrace
    # it or read its memory.
    pid = f.proc.pid
    for task in os.listdir(f"/proc/{pid}/task"):
        for name in ("status", "mem"):
            path = f"/proc/{pid}/task/{task}/{name}"
            owner = os.stat(path).st_uid
            f.check(owner == 0, f"{path} is owned by uid {owner}: the process is dumpable")


def check_serves(f):
    with H.tls_connect(f.port(), CTX, timeout=H.bound(10)) as s:
        s.sendall(b"ECHO\nafter the drop")
        got = H.recv_exact(s, len(b"after the drop"))
        f.check(got == b"after the drop", f"echo through the dropped ferry returned {got!r}")


def expect_exit_1_with(r, line):
    assert r.returncode == 1, f"expected exit 1\n{out(r)}"
    assert line in r.stderr.decode(errors="replace").splitlines(), \
        f"stderr lacks the line {line!r}\n{out(r)}"


@S.test
def drops_to_user_and_group():
    f = new_ferry("drop", user="nobody", group="nogroup")
    try:
        f.start()
        f.wait_log(r"^\S+ info running as user nobody \(uid %d, gid %d\)$"
                   % (NOBODY.pw_uid, NOGROUP.gr_gid), timeout=1)
        check_ids(f, NOBODY.pw_uid, NOGROUP.gr_gid)
        check_not_dumpable(f)
        check_serves(f)
        # /proc/self still works for the process metrics after the drop.
        m = f.scrape()
        f.check(H.mget(m, "process_open_fds") > 0, "process_open_fds is 0 after the drop")
        f.check(H.mget(m, "ferry_connections_total", service="web") >= 1,
                "the connection was not counted")
        f.stop()
    finally:
        f.kill()


@S.test
def group_defaults_to_the_users_primary_group():
    f = new_ferry("primary", user="nobody")
    try:
        f.start()
        check_ids(f, NOBODY.pw_uid, NOBODY.pw_gid)
        check_serves(f)
        f.stop()
    finally:
        f.kill()


@S.test
def not_dumpable_without_user():
    # Started unprivileged (as systemd's User= would), without `user`: still not dumpable.
    own = H.make_temp_dir("ferry-it-nobody-")
    for src in (certs.ec_crt, certs.ec_key):
        shutil.copy(src, own)
    os.chown(own, NOBODY.pw_uid, NOBODY.pw_gid)
    for name in os.listdir(own):
        os.chown(os.path.join(own, name), NOBODY.pw_uid, NOBODY.pw_gid)
    svc = H.service("web", H.free_port(), backend.port, os.path.join(own, "ec.crt"),
                    os.path.join(own, "ec.key"))
    f = H.Ferry(own, [svc], workers=1, name="unprivileged")
    os.chown(f.config_path, NOBODY.pw_uid, NOBODY.pw_gid)
    f.spawn_kw = {"user": NOBODY.pw_uid, "group": NOBODY.pw_gid, "extra_groups": []}
    f.binary = NOBODY_BIN
    try:
        f.start()
        check_ids(f, NOBODY.pw_uid, NOBODY.pw_gid, groups=[])
        check_not_dumpable(f)
        check_serves(f)
        f.stop()
    finally:
        f.kill()


@S.test
def a_user_other_than_itself_needs_root():
    own = H.make_temp_dir("ferry-it-nobody-")
    for src in (certs.ec_crt, certs.ec_key):
        shutil.copy(src, own)
    for path in [own] + [os.path.join(own, n) for n in os.listdir(own)]:
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    svc = H.service("web", H.free_port(), backend.port, os.path.join(own, "ec.crt"),
                    os.path.join(own, "ec.key"))
    path = os.path.join(own, "root.toml")
    with open(path, "w") as fh:
        fh.write(H.config_text([svc], workers=1, global_extra={"user": "root"}))
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    r = H.run([NOBODY_BIN, "--config", path], timeout=H.bound(30), check=False,
              user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[])
    line, col = value_pos(path, "user")
    expect_exit_1_with(r, f'{path}:{line}:{col}: global.user: cannot switch to user "root": '
                          f"ferry runs as uid {NOBODY.pw_uid}, not as root")


@S.test
def unknown_user_refuses_to_start():
    f = new_ferry("nouser", user=NO_USER)
    r = ferry_cli("--config", f.config_path)
    line, col = value_pos(f.config_path, "user")
    expect_exit_1_with(r, f'{f.config_path}:{line}:{col}: global.user: no such user "{NO_USER}"')
    assert " ready: " not in r.stderr.decode(errors="replace"), out(r)


@S.test
def unknown_group_refuses_to_start():
    f = new_ferry("nogroup", user="nobody", group=NO_GROUP)
    r = ferry_cli("--config", f.config_path)
    line, col = value_pos(f.config_path, "group")
    expect_exit_1_with(r, f'{f.config_path}:{line}:{col}: global.group: '
                          f'no such group "{NO_GROUP}"')


@S.test
def check_reports_unknown_user_and_group():
    f = new_ferry("check", user=NO_USER, group=NO_GROUP)
    r = ferry_cli("--check", "--config", f.config_path)
    uline, ucol = value_pos(f.config_path, "user")
    gline, gcol = value_pos(f.config_path, "group")
    expect_exit_1_with(r, f'{f.config_path}:{uline}:{ucol}: global.user: '
                          f'no such user "{NO_USER}"')
    expect_exit_1_with(r, f'{f.config_path}:{gline}:{gcol}: global.group: '
                          f'no such group "{NO_GROUP}"')
    good = new_ferry("check-good", user="nobody", group="nogroup")
    r = ferry_cli("--check", "--config", good.config_path)
    assert r.returncode == 0, out(r)


def key_copy(name, mode):
    path = os.path.join(tmp, name)
    shutil.copy(certs.ec_key, path)
    os.chmod(path, mode)
    return path


@S.test
def world_readable_key_is_refused():
    key = key_copy("world.key", 0o644)
    f = new_ferry("world", key=key)
    line, col = value_pos(f.config_path, "key")
    want = (f'{f.config_path}:{line}:{col}: service[0].key: private key "{key}" is readable by '
            f"other users (chmod 600 or 640)")
    expect_exit_1_with(ferry_cli("--config", f.config_path), want)
    expect_exit_1_with(ferry_cli("--check", "--config", f.config_path), want)


@S.test
def group_readable_key_is_a_warning():
    key = key_copy("group.key", 0o640)
    f = new_ferry("group", key=key)
    line, col = value_pos(f.config_path, "key")
    try:
        f.start()
        f.check(f"{f.config_path}:{line}:{col}: service[0].key: warning: private key \"{key}\" "
                f"is readable by its group" in f.stderr_text().splitlines(),
                "no group-readable warning")
        check_serves(f)
        f.stop()
    finally:
        f.kill()


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("test_privileges: needs root (switches users); skipped", flush=True)
        sys.exit(77)
    S.main()
