"""The auditor's side: reading, verifying, proving and searching a published log.

Needs only read access to the store and the verifier keys; decisions are
the pure core's (extproc.core.verify). Nothing here imports the writer
(extproc.log, extproc.server).

Library, for every program that reads a log (the CLI, the writer's
self-audit and reconcile, the live proof API, the demo, scripts):

- `reader.py`: the one store reader (listing by log, original versions,
  bounded reads, the bundle in effect);
- `verify.py`: verify one log or a whole store, incrementally from a state;
- `retention.py`: Object Lock retention of the objects and the bucket rule;
- `prove.py`: inclusion and consistency proofs from published objects;
- `search.py`: streaming search, verified as it reads.

The commands' own (only extproc.cli imports them):

- `report.py`: what `verify` and `search` print (text, JSON, the table);
- `statefile.py`: the `verify --state` file on disk.

tests/integration/test_boundaries.py holds these lines.
"""
