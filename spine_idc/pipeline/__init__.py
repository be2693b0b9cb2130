"""The one edge the workflow's rules call, through ``spine-idc shard <stage>`` and the
``manifest`` and ``cohort`` verbs.

* :mod:`.stages`: one function per stage and series (select, download, convert, segment,
  finish, publish): read the stage's inputs, call the functional core, write its outputs
  atomically, and turn bad input into a recorded failure;
* :mod:`.shards`: a stage over every series of a shard, with stamps so that a re-run does
  only what is missing or stale;
* :mod:`.segment_runner`: the segment stage's pipeline (load, infer, finish overlapped; the
  model loaded once per job);
* :mod:`.packs`: a shard's outputs as one tar, where there is no shared filesystem;
* :mod:`.cohort`: the cohort tables and the closing summary.

Nothing below this package imports it; it imports everything below.
"""
