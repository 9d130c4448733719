"""Scale-out on Ray Serve (the optional `cluster` extra): an `Api` ingress deployment and an `Engine` deployment
of N replicas, questions routed to the replica that already holds their passages' KV.

`affinity.py` and `ledger.py` are pure (no Ray); every other module here imports Ray.
"""
