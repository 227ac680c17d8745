"""Interface lockdown: the host's own stack processes nothing that arrives on a guest-only interface.

    pattern.py interface names and nftables wildcards                          pure
    plan.py    patterns -> LockdownPlan (nftables commands and sysctl steps)   pure
    state.py   what lockdown applied and the old values, as JSON data           pure
    apply.py   one nftables transaction plus read-compare-write sysctls         I/O
    report.py  `lockdown list`: the record next to the live tables and values
    feature.py lockdown in `apply FILE`, `restore` and `flush` (guestfence.state)
    links.py   the kernel's interfaces, the protected ones, and the link watcher
"""
