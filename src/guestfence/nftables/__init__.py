"""nftables plumbing shared by every backend that writes rules (guests,
lockdown, rootless): rulesets are libnftables JSON data, applied in one
transaction.

    apply.py   the libnftables handle and transaction: the only caller of libnftables
    build.py   small builders of libnftables JSON: Table (commands about one table's
               objects), expressions, statements                                  (pure)
    match.py   a policy rule -> match expressions, the same for every backend     (pure)
"""
