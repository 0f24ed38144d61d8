"""Schedules: cron and interval rules, the loop that fires them, and tasks.yaml.

`rules` is pure logic (validation, fire times, misfire plans; no I/O); `service` holds
`Scheduler` (one app's schedules, for the API and tasks files) and `SchedulerService`
(the loop every worker runs, enqueueing each due fire time once); `tasks_file` reads
and validates a `tasks.yaml` (safe YAML, no database).

External systems: none of its own. Schedules are stored through `agentsched.db.schedules`
and fire times are enqueued through `agentsched.jobs.queue.TaskQueue`.
"""
