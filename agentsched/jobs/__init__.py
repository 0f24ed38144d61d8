"""The job queue: enqueue, track, run and record executions of registered tasks.

`queue.TaskQueue` is the client; `tracker.Tracker` makes every status change one Lua
script from `status_scripts` or `recovery_scripts` (the hash, the `records` stream and
the bus event written together); `arq_pool` lets the start and finish scripts ride in
arq's own transactions; `recorder.Recorder` writes the snapshots to SQL through
`agentsched.db`; `progress` takes reports from running tasks; `retention` prunes old
history; `runtime.Runtime` opens a process's Redis and database together. The record
itself, `Execution`, is the leaf `agentsched.execution`.

External systems: only `tracker` (with its scripts) writes arq's enqueue format and
the execution hashes; only `arq_pool` knows arq's transaction shapes; SQL is issued
only through `agentsched.db`.
"""
