"""A small BM25 search index persisted in one SQLite file.

Tables: `docs` (url, title, text, length, indexed_at) and `postings` (term, url, tf), so a
query reads only the postings of its own terms. Answers are extractive: the sentences
of the best documents that share the most query terms. SQLite allows the worker (which
writes) and the API (which reads) to use the file at the same time.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

K1, B = 1.5, 0.75
_TOKEN = re.compile(r"[a-z0-9]+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
STOPWORDS = frozenset(
    "a an and are as at be by do does for from has have how i in is it its of on or so "
    "that the their them then there these they this to was what when where which who why "
    "will with you your can each every".split()
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (url TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL,
    length INTEGER NOT NULL, indexed_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS postings (term TEXT NOT NULL, url TEXT NOT NULL, tf INTEGER NOT NULL,
    PRIMARY KEY (term, url)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS postings_url ON postings (url);
"""


def tokens(text: str) -> list[str]:
    """Lower-case word tokens without stop words."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


@dataclass(frozen=True, slots=True)
class Hit:
    url: str
    title: str
    score: float
    text: str


class Index:
    """BM25 over the documents in `path` (created on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in one transaction (committed on success), always closed."""
        db = sqlite3.connect(self.path, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                yield db
        finally:
            db.close()

    def add(self, url: str, title: str, text: str) -> int:
        """Index (or re-index) a document; returns its length in tokens."""
        terms = tokens(f"{title}\n{text}")
        now = dt.datetime.now(dt.UTC).isoformat()
        with self._connect() as db:  # one transaction: readers see the old or the new doc
            db.execute("DELETE FROM postings WHERE url = ?", (url,))
            db.execute(
                "INSERT OR REPLACE INTO docs (url, title, text, length, indexed_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (url, title, text, len(terms), now),
            )
            db.executemany(
                "INSERT INTO postings (term, url, tf) VALUES (?, ?, ?)",
                [(term, url, tf) for term, tf in Counter(terms).items()],
            )
        return len(terms)

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The `k` best documents for `query` by BM25, best first."""
        terms = sorted(set(tokens(query)))
        if not terms:
            return []
        marks = ",".join("?" * len(terms))
        with self._connect() as db:
            n, avg = db.execute("SELECT COUNT(*), AVG(length) FROM docs").fetchone()
            rows = db.execute(
                "SELECT p.term, p.url, p.tf, d.length FROM postings p JOIN docs d "
                f"ON d.url = p.url WHERE p.term IN ({marks})",
                terms,
            ).fetchall()
            df = Counter(term for term, *_ in rows)
            scores: Counter[str] = Counter()
            for term, url, tf, length in rows:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                norm = tf + K1 * (1 - B + B * length / (avg or 1))
                scores[url] += idf * tf * (K1 + 1) / norm
            best = scores.most_common(k)
            if not best:
                return []
            docs = {
                url: (title, text)
                for url, title, text in db.execute(
                    f"SELECT url, title, text FROM docs WHERE url IN ({','.join('?' * len(best))})",
                    [url for url, _ in best],
                )
            }
        return [Hit(url, docs[url][0], round(score, 4), docs[url][1]) for url, score in best]

    def answer(self, query: str, k: int = 3) -> tuple[str, list[Hit]]:
        """An extractive answer (up to two sentences of the best hits) and the hits.

        Only real sentences count (ending in . ! or ?): headings and link texts do not.
        """
        hits = self.search(query, k)
        wanted = set(tokens(query))
        ranked: dict[str, tuple[int, int, int]] = {}
        for rank, hit in enumerate(hits):
            for position, part in enumerate(_SENTENCE.split(hit.text)):
                sentence = part.strip()
                overlap = len(wanted & set(tokens(sentence)))
                if overlap and sentence.endswith((".", "!", "?")) and sentence not in ranked:
                    ranked[sentence] = (-overlap, rank, position)
        best = sorted(ranked, key=ranked.__getitem__)[:2]
        return " ".join(best), hits

    def documents(self) -> list[dict[str, object]]:
        with self._connect() as db:
            rows = db.execute("SELECT url, title, length, indexed_at FROM docs ORDER BY url")
            return [
                dict(zip(("url", "title", "length", "indexed_at"), r, strict=True)) for r in rows
            ]

    def stale(self, older_than: dt.timedelta) -> list[str]:
        """URLs indexed longer ago than `older_than`."""
        cutoff = (dt.datetime.now(dt.UTC) - older_than).isoformat()
        with self._connect() as db:
            return [
                u for (u,) in db.execute("SELECT url FROM docs WHERE indexed_at < ?", (cutoff,))
            ]
