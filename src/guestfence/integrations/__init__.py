"""Where guests are born: the programs other software calls to register a
guest when it appears and remove it when it goes.

    cni.py       a CNI chained plugin (``type: guestfence``)
    qemu.py      QEMU's ``script=``/``downscript=`` pair
    libvirt.py   libvirt's qemu hook
    registry.py  what they share: add and remove guests in the recorded state

Each reads its host's input (stdin JSON, argv, domain XML) into ``Guest``
values with pure functions, and changes the firewall only through
``registry``. Each fails closed: any error exits non-zero, which makes its
host abort the start of the guest.
"""
