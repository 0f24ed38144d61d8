"""The database adapter: tables, engine and the SQL of executions and schedules.

Only this package builds SQL, always through bound parameters.
"""
