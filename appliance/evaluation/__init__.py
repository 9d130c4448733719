"""`appliance eval`: a golden set of questions run over a collection, scored, and compared with a baseline run."""
