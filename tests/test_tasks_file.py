"""tasks.yaml: safe parsing, errors that name file/task/field/line, idempotent loading."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentsched.errors import TasksFileError
from agentsched.jobs.runtime import Runtime
from agentsched.registry import import_task_modules
from agentsched.scheduling.service import Scheduler, load_tasks_files
from agentsched.scheduling.tasks_file import parse_tasks_file
from agentsched.settings import Settings

import_task_modules(["tests.sample_tasks"])


def write(tmp_path: Path, body: str, name: str = "tasks.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


GOOD = """
app: {app}
tasks:
  - name: check-inbox
    function: tests.noop
    interval: 5m
    kwargs: {{folder: INBOX}}
  - name: daily-digest
    function: tests.sample_tasks.add
    cron: "0 7 * * mon-fri"
    timezone: Europe/Berlin
    args: [1, 2]
    enabled: true
    misfire_policy: run_all
    misfire_grace_seconds: 60
    max_catchup: 3
    overlap: allow
"""


def test_good_file(tmp_path: Path) -> None:
    parsed = parse_tasks_file(write(tmp_path, GOOD.format(app="email-agent")), check_functions=True)
    assert parsed.app == "email-agent"
    inbox, digest = parsed.tasks
    assert inbox.interval_seconds == 300 and inbox.kwargs == {"folder": "INBOX"}
    assert digest.cron == "0 7 * * mon-fri" and digest.timezone == "Europe/Berlin"
    assert (digest.misfire_policy, digest.max_catchup, digest.overlap) == ("run_all", 3, "allow")


@pytest.mark.parametrize(
    ("body", "task", "field", "line", "words"),
    [
        ("app: a\ntasks:\n  - name: t\n    function: tests.noop\n    interval: 5m\n"
         "    colour: red\n", "t", "colour", 6, "unknown field"),
        ("app: a\ntasks:\n  - name: t\n    function: tests.noop\n    cron: '*/0 * * * *'\n",
         "t", "cron", 5, "step 0"),
        ("app: a\ntasks:\n  - name: t\n    function: tests.noop\n    interval: 0\n",
         "t", "interval", 5, "at least 1 second"),
        ("app: a\ntasks:\n  - name: t\n    function: tests.noop\n    cron: '0 0 * * *'\n"
         "    timezone: Mars/Base\n", "t", "timezone", 6, "unknown timezone"),
        ("app: a\ntasks:\n  - name: t\n    function: tests.nope\n    interval: 5m\n",
         "t", "function", 4, "not a registered task"),
        ("app: a\ntasks:\n  - name: t\n    function: tests.noop\n", "t", "cron",
         3, "exactly one of cron or interval"),
        ("app: a\ntasks:\n  - {name: t, function: tests.noop, interval: 5m}\n"
         "  - {name: t, function: tests.noop, interval: 6m}\n", "t", "name", 4, "duplicate"),
        ("app: a\ntasks:\n  - function: tests.noop\n    interval: 5m\n", "#1", "name", 3,
         "required"),
    ],
)  # fmt: skip
def test_errors_name_file_task_field_and_line(
    tmp_path: Path, body: str, task: str, field: str, line: int, words: str
) -> None:
    path = write(tmp_path, body)
    with pytest.raises(TasksFileError) as info:
        parse_tasks_file(path, check_functions=True)
    err = info.value
    message = str(err)
    assert (err.path, err.task, err.field) == (str(path), task, field)
    assert message.startswith(f"{path}: task {task!r}: {field}: "), message
    assert words in message and f"(line {line})" in message and "\n" not in message


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ("app: a\ntasks: []\nextra: 1\n", "extra", "unknown key"),
        ("tasks: []\n", "app", "must name the app"),
        ("app: a\ntasks: {name: x}\n", "tasks", "must be a list"),
        ("- just a list\n", "tasks_file", "must be a mapping"),
        ("app: a\napp: b\ntasks: []\n", "tasks_file", "duplicate key 'app'"),
        ("app: a\ntasks:\n  - &t {name: x, function: tests.noop, interval: 5m}\n  - *t\n",
         "tasks_file", "aliases are not allowed"),
        ("app: [unclosed\n", "tasks_file", "line"),
    ],
)  # fmt: skip
def test_file_level_errors(tmp_path: Path, body: str, field: str, words: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(TasksFileError) as info:
        parse_tasks_file(path)
    assert info.value.field == field and words in str(info.value)
    assert str(info.value).startswith(str(path))


def test_python_tags_are_rejected_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"""
        app: a
        tasks:
          - name: evil
            function: tests.noop
            interval: 5m
            args: !!python/object/apply:os.system ["touch {marker}"]
    """)  # fmt: skip
    with pytest.raises(TasksFileError) as info:
        parse_tasks_file(path)
    assert "python tags are not allowed" in str(info.value) and "(line 6)" in str(info.value)
    assert not marker.exists()
    top = write(tmp_path, f'!!python/object/apply:os.system ["touch {marker}"]\n', "top.yaml")
    with pytest.raises(TasksFileError):
        parse_tasks_file(top)
    assert not marker.exists()


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TasksFileError) as info:
        parse_tasks_file(tmp_path / "nope.yaml")
    assert "cannot read" in str(info.value) and "\n" not in str(info.value)


# --- loading into the database ------------------------------------------------------------------
@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with Runtime(settings) as rt:
        yield rt


async def test_load_is_idempotent_and_follows_the_file(tmp_path: Path, runtime: Runtime) -> None:
    app = runtime.settings.app
    scheduler = Scheduler(runtime)
    api_made = await scheduler.create(
        {"name": "api-made", "function": "tests.noop", "interval": 60}
    )
    path = write(tmp_path, GOOD.format(app=app))
    first = await scheduler.load_file(path)
    assert sorted(first.created) == ["check-inbox", "daily-digest"]
    rows, total = await scheduler.list(source="yaml")
    assert total == 2 and {s.source for s in rows} == {"yaml"}

    again = await scheduler.load_file(path)
    assert again.created == [] and again.deleted == [] and again.updated == []
    assert sorted(again.unchanged) == ["check-inbox", "daily-digest"]
    assert [s.to_dict() for s in (await scheduler.list(source="yaml"))[0]] == [
        s.to_dict() for s in rows
    ]

    # Edit one task, drop the other, and try to take over the API-created name.
    write(tmp_path, f"""
        app: {app}
        tasks:
          - name: check-inbox
            function: tests.noop
            interval: 10m
          - name: api-made
            function: tests.sample_tasks.add
            interval: 1h
            args: [1, 2]
    """)  # fmt: skip
    third = await scheduler.load_file(path)
    assert third.updated == ["check-inbox"] and third.deleted == ["daily-digest"]
    assert third.skipped == ["api-made"] and third.created == []
    rows, total = await scheduler.list()
    assert total == 2
    by_name = {s.name: s for s in rows}
    assert by_name["check-inbox"].interval_seconds == 600
    assert (await scheduler.get(api_made.id)).to_dict() == api_made.to_dict()


async def test_invalid_file_writes_nothing(tmp_path: Path, runtime: Runtime) -> None:
    app = runtime.settings.app
    good = write(tmp_path, GOOD.format(app=app), "good.yaml")
    bad = write(tmp_path, f"app: {app}\ntasks:\n  - {{name: x, function: tests.noop, "
                          f"cron: '60 * * * *'}}\n", "bad.yaml")  # fmt: skip
    with pytest.raises(TasksFileError) as info:
        await load_tasks_files(runtime, [good, bad])
    assert info.value.task == "x" and info.value.field == "cron"
    assert (await Scheduler(runtime).list())[1] == 0


async def test_file_of_another_app_is_refused(tmp_path: Path, runtime: Runtime) -> None:
    path = write(tmp_path, GOOD.format(app="somebody-else"))
    with pytest.raises(TasksFileError) as info:
        await Scheduler(runtime).load_file(path)
    assert info.value.field == "app" and "somebody-else" in str(info.value)
    with pytest.raises(TasksFileError):
        await load_tasks_files(runtime, [path])
    assert (await Scheduler(runtime).list())[1] == 0


async def test_loaded_schedule_can_be_edited_then_reset_by_reload(
    tmp_path: Path, runtime: Runtime
) -> None:
    scheduler = Scheduler(runtime)
    path = write(tmp_path, GOOD.format(app=runtime.settings.app))
    [report] = await load_tasks_files(runtime, [path])
    assert report.app == runtime.settings.app
    inbox = next(s for s in (await scheduler.list())[0] if s.name == "check-inbox")
    await scheduler.update(inbox.id, {"interval": "1m"})
    again = await scheduler.load_file(path)
    assert again.updated == ["check-inbox"]
    assert (await scheduler.get(inbox.id)).interval_seconds == 300


async def test_several_files_of_one_app_load_together(tmp_path: Path, runtime: Runtime) -> None:
    app = runtime.settings.app
    one = write(tmp_path, f"app: {app}\ntasks:\n  - {{name: a, function: tests.noop, "
                          f"interval: 1m}}\n", "one.yaml")  # fmt: skip
    two = write(tmp_path, f"app: {app}\ntasks:\n  - {{name: b, function: tests.noop, "
                          f"interval: 2m}}\n", "two.yaml")  # fmt: skip
    reports = await load_tasks_files(runtime, [one, two])
    assert [r.created for r in reports] == [["a"], ["b"]]
    reports = await load_tasks_files(runtime, [one, two])  # no file deletes the other's
    assert [r.deleted for r in reports] == [[], []]
    assert (await Scheduler(runtime).list())[1] == 2
    clash = write(tmp_path, f"app: {app}\ntasks:\n  - {{name: a, function: tests.noop, "
                            f"interval: 3m}}\n", "three.yaml")  # fmt: skip
    with pytest.raises(TasksFileError) as info:
        await load_tasks_files(runtime, [one, clash])
    assert (info.value.task, info.value.field) == ("a", "name")
    assert str(one) in str(info.value)
