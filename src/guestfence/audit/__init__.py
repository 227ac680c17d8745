"""What can a guest reach on its host? Answered by testing, not by reading rules.

    collect.py   host listeners (sock_diag) and addresses -> Targets      (I/O; plan_targets pure)
    probe.py     each target tried from the guest's side -> Observations  (I/O)
    runner.py    the probes as a program, for a sandboxed child            (I/O)
    sandboxed.py probe.py's job done through guestfence.sandbox            (I/O)
    counters.py  drop counters of table inet guestfence                   (I/O; sum pure)
    compare.py   compare(policy, observations, context) -> Findings       (pure)
    report.py    table, JSON and one-file HTML                            (pure)
    session.py   one audit start to finish: policy, targets, probes, compare (I/O)
"""
