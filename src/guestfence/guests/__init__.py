"""The VM and container guests' firewall: table ``inet guestfence`` (and its
arp and bridge siblings), one chain set per guest, dispatched by interface.

    names.py      every object name of the guests' tables; nothing else names them
    guest.py      Guest: a guest's link and policy, as values and as its record   (pure)
    compile.py    policy + guests -> libnftables JSON commands                    (pure)
    antispoof.py  what a guest may send as its own (addresses, MACs, ND)          (pure)
    firewall.py   the record, the plans, ``status``; apply through nftables.apply
    drift.py      the live tables compared with the ones the record makes        (pure)
    explain.py    a registered guest's flow decided as its firewall decides it    (pure)

Shared with the other nftables backends (lockdown, rootless): guestfence.nftables.
"""
