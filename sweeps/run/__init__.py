"""Running a sweep on Ray Tune: `run_sweep` and `resume_sweep` (`runner`), the Tuner with its
callbacks (`tuner`, `lean_results`, `progress`), a large grid cut into parts (`parts`), shared
pretrainings a resume still lacks (`missing_pretrainings`), what the run left (`outcome`) and
what it tells the user (`notices`), and where a stored sweep stands, read from its storage
without Ray or MLflow (`status`, `status_lines`). The top of `sweeps`: imports every package
below it."""
