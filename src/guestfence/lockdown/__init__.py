"""Interface lockdown: the host's own stack processes nothing that arrives on a guest-only interface.

    pattern.py interface names and nftables wildcards                          pure
    plan.py    patterns -> LockdownPlan (nftables commands and sysctl steps)   pure
    state.py   what lockdown applied and the old values, as JSON data           pure
    apply.py   one nftables transaction plus read-compare-write sysctls         I/O
    links.py   the kernel's interfaces, the protected ones, and the link watcher
"""
