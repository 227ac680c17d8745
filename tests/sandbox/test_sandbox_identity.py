"""identity.acting_as: one handler thread takes on a guest's ids with no capability, and gets its own back."""

from __future__ import annotations

import os
import threading

import pytest

from guestfence.sandbox import identity, kernel

NOBODY = 65534


def _effective_caps() -> int:
    with open("/proc/thread-self/status", encoding="ascii") as status:
        return next(int(line.split()[1], 16) for line in status if line.startswith("CapEff:"))


def _in_a_thread(body) -> dict:
    seen: dict = {}

    def run() -> None:
        try:
            body(seen)
        except BaseException as exc:  # reported to the test's thread
            seen["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in seen:
        raise seen["error"]
    return seen


@pytest.mark.lab  # only root can take on another identity
def test_a_thread_takes_on_the_guest_and_gives_it_back() -> None:
    guest = identity.Identity(uids=(NOBODY, NOBODY, NOBODY), gids=(NOBODY, NOBODY, NOBODY), groups=frozenset({NOBODY}))

    def body(seen: dict) -> None:
        kernel.keep_only_effective(kernel.CAP_SYS_PTRACE, kernel.CAP_KILL)
        before = identity.of_this_thread()
        with identity.acting_as(guest):
            seen["inside"] = identity.of_this_thread()
            seen["caps_inside"] = _effective_caps()
        seen["after"] = identity.of_this_thread()
        seen["before"] = before
        seen["caps_after"] = _effective_caps()

    seen = _in_a_thread(body)
    inside = seen["inside"]
    assert inside.uids[:2] == (NOBODY, NOBODY) and inside.gids[:2] == (NOBODY, NOBODY)
    assert inside.groups == {NOBODY}
    assert seen["caps_inside"] == 0
    assert seen["after"] == seen["before"]
    assert seen["caps_after"] == 1 << kernel.CAP_SYS_PTRACE | 1 << kernel.CAP_KILL
    assert (os.getuid(), os.geteuid()) == (0, 0)  # other threads never changed


@pytest.mark.lab  # the root case
def test_a_root_guest_of_a_root_supervisor_keeps_no_capability() -> None:
    def body(seen: dict) -> None:
        kernel.keep_only_effective(kernel.CAP_SYS_PTRACE, kernel.CAP_KILL)
        with identity.acting_as(identity.of_this_thread()):
            seen["caps_inside"] = _effective_caps()
        seen["caps_after"] = _effective_caps()

    seen = _in_a_thread(body)
    assert seen["caps_inside"] == 0
    assert seen["caps_after"] == 1 << kernel.CAP_SYS_PTRACE | 1 << kernel.CAP_KILL


def test_of_thread_reads_a_threads_ids() -> None:
    me = identity.of_thread(threading.get_native_id())
    assert me.uids[:2] == (os.getuid(), os.geteuid()) and me.gids[:2] == (os.getgid(), os.getegid())
    assert me.groups == frozenset(os.getgroups())
