"""Demo pages served by scraper-agent itself, so the platform crawls something offline."""

from __future__ import annotations

from html import escape

# (title, paragraphs); page n links to every other page.
PAGES: list[tuple[str, list[str]]] = [
    (
        "Acme agent platform overview",
        [
            "The Acme platform runs five agent apps: aiops-bot, email-agent, rag-chat, "
            "scraper-agent and support-bot. Each app has its own task queue and workers.",
            "Apps talk to each other through an event bus. The scraper publishes every page "
            "it fetches, and the chat assistant indexes those pages to answer questions.",
        ],
    ),
    (
        "Redis Streams and consumer groups",
        [
            "The event bus is a Redis stream. Every app reads it as its own consumer group, "
            "so replicas of one app share the events while every app still sees each event.",
            "An event is acknowledged after its handler finished. Events that are never "
            "acknowledged are delivered again, and poison events go to a dead-letter stream.",
        ],
    ),
    (
        "Scheduling tasks with cron and intervals",
        [
            "A schedule has either a cron expression with five fields, such as "
            "'0 7 * * mon-fri' for seven in the morning on weekdays, or an interval like 5m.",
            "Every fire time is enqueued exactly once, even when several scheduler loops run, "
            "because each fire time has a deterministic execution id.",
        ],
    ),
    (
        "How the BM25 ranking function works",
        [
            "BM25 scores a document for a query by adding, for each query term, the inverse "
            "document frequency of the term weighted by a saturating term frequency.",
            "Long documents are normalised by their length relative to the average length, "
            "controlled by the parameters k1 and b.",
        ],
    ),
    (
        "Incident runbook: a worker is down",
        [
            "When aiops-bot reports that an app has no live worker, restart the worker "
            "process of that app; queued jobs wait in Redis and are not lost.",
            "Jobs that were running when a worker died are recovered after their lease "
            "expires and retried, or marked failed with the kind worker_lost.",
        ],
    ),
]


def page_count() -> int:
    return len(PAGES)


def render(n: int) -> str | None:
    """The HTML of demo page `n` (1-based), or None when there is no such page."""
    if not 1 <= n <= len(PAGES):
        return None
    title, paragraphs = PAGES[n - 1]
    body = "\n".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    links = "\n".join(
        f'<li><a href="/demo/pages/{i}">{escape(t)}</a></li>'
        for i, (t, _) in enumerate(PAGES, 1)
        if i != n
    )
    return (
        f"<!doctype html><html><head><title>{escape(title)}</title>"
        "<style>body{font-family:sans-serif}</style></head>"
        f"<body><h1>{escape(title)}</h1>\n{body}\n<nav><ul>\n{links}\n</ul></nav></body></html>"
    )
