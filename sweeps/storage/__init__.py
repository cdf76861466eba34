"""What a sweep's storage holds and how to read it: the folder layout and the stored spec
(`sweep_files`), stored trial results and errors (`results`), a Ray trial's end read from its
file's tail (`trial_end`), Tune's stored experiment state (`tune_state`), what a trial cost
(`costs`), and writes that a killed driver leaves restorable (`safe_storage`). Local paths, NFS
or object stores. Imports `sweeps.design` and `trainables`."""
