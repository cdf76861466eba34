"""Which trials run, and when: the Tune search space and searcher of a sweep (`search_space`),
the grid's gate that holds trials until their shared pretraining exists (`snapshot_gate`), and
the adaptive boundary search (`boundary`: one joint fit per round and the round's trials;
`acquisition`: which trials they are; `boundary_searcher`: the resumable Tune `Searcher`).
Imports `sweeps.fit`, `sweeps.design`, `sweeps.cluster` (trial slots) and `trainables`."""
