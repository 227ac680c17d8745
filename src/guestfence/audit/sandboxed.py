"""Probe the host's services from inside a guestfence sandbox.

The probe runner (``guestfence.audit.runner``) runs as a child of
``guestfence.sandbox.Sandbox(policy)``, so every probe's connect or send
meets the seccomp supervisor, exactly as a sandboxed guest's would. The
sandbox shares the host's network namespace: loopback is the host's, and
every target is a real host service.

The supervisor reports each refusal (``on_denied``): a probe it refused is
marked so, with the rule that decided, instead of a bare "refused".
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from collections.abc import Sequence

from guestfence.audit.model import Observation, Status, Target
from guestfence.audit.probe import DEFAULT_PARALLEL, DEFAULT_TIMEOUT, GuestView, Probed, collect_guest_view
from guestfence.audit.runner import decode_results, encode_request
from guestfence.errors import HostError
from guestfence.policy.model import Policy
from guestfence.sandbox import Denial, Sandbox

START_MARGIN = 30.0
"""Seconds allowed, beyond the probes' own bound, for starting the runner."""


def probe_sandboxed(
    targets: Sequence[Target],
    policy: Policy,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    parallel: int = DEFAULT_PARALLEL,
) -> Probed:
    """Probe ``targets`` from a child sandboxed under ``policy``. @gateway has no
    meaning for a sandboxed process: the view has no gateways."""
    interfaces = collect_guest_view(()).interfaces
    denials: dict[str, str] = {}
    lock = threading.Lock()

    def on_denied(denial: Denial) -> None:
        with lock:
            denials[denial.destination] = denial.decided_by

    request = encode_request(targets, timeout=timeout, parallel=parallel, interfaces=interfaces)
    bound = math.ceil(max(len(targets), 1) / parallel) * timeout + START_MARGIN
    try:
        done = Sandbox(policy, on_denied=on_denied).run(
            [sys.executable, "-m", "guestfence.audit.runner"], input=request, capture_output=True, text=True,
            timeout=bound,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise HostError(f"the sandboxed probe runner did not finish within {bound:.0f} s") from exc
    if done.returncode != 0:
        raise HostError(f"the sandboxed probe runner failed (exit status {done.returncode}): {done.stderr.strip()}")
    observations = decode_results(targets, done.stdout)
    with lock:
        refused = dict(denials)
    return Probed(
        view=GuestView(interfaces=interfaces),
        observations=tuple(_mark_refused(o, refused) for o in observations),
    )


def _mark_refused(observation: Observation, refused: dict[str, str]) -> Observation:
    decided_by = refused.get(str(observation.target))
    if decided_by is None or observation.status.reachable:
        return observation
    return Observation(
        target=observation.target, status=Status.REFUSED, detail=f"refused by the sandbox ({decided_by})"
    )
