"""The mail email-agent works on: a local Maildir in, `.eml` files in an outbox out.

On first use the maildir is seeded with a few demo messages, so the platform has mail
to read offline. Messages move from `new/` to `cur/` (flag S) once the inbox is checked.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import mailbox
import re
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

_URGENT = re.compile(r"\b(urgent|asap|outage|down|incident|critical)\b", re.I)
DEMO_MAIL = [
    (
        "ops@example.com",
        "URGENT: nightly backup failed",
        "The nightly backup job failed at 02:13 with a disk-full error. Please check.",
    ),
    (
        "alice@example.com",
        "Quarterly report draft",
        "Hi, the draft of the quarterly report is attached for review by Friday.",
    ),
    (
        "billing@vendor.example",
        "Invoice 2024-117",
        "Your invoice for the cloud hosting of last month is now available.",
    ),
    (
        "bob@example.com",
        "Lunch on Thursday?",
        "Shall we try the new place around the corner on Thursday?",
    ),
]


def compose(sender: str, to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain="agentsched.local")
    message.set_content(body)
    return message


def open_maildir(data_dir: Path, seed: bool = True) -> mailbox.Maildir:
    """The app's maildir, created (and seeded with demo mail) on first use."""
    box = mailbox.Maildir(data_dir / "maildir", factory=None, create=True)
    marker = data_dir / "maildir" / ".seeded"
    if seed and not marker.exists():
        for sender, subject, body in DEMO_MAIL:
            box.add(compose(sender, "me@example.com", subject, body))
        marker.touch()
    return box


def summary(key: str, message: mailbox.MaildirMessage) -> dict[str, Any]:
    parsed = email.message_from_bytes(message.as_bytes(), policy=default)
    body = parsed.get_body(preferencelist=("plain",))
    text = body.get_content().strip() if body is not None else ""
    subject = str(parsed.get("Subject", ""))
    return {
        "id": key,
        "from": str(parsed.get("From", "")),
        "subject": subject,
        "received_at": dt.datetime.fromtimestamp(message.get_date(), dt.UTC).isoformat(),
        "seen": "S" in message.get_flags(),
        "urgent": bool(_URGENT.search(f"{subject} {text}")),
        "preview": text[:160],
    }


def read_new(box: mailbox.Maildir) -> list[dict[str, Any]]:
    """Summaries of the messages in `new/`, which are then marked seen (moved to `cur/`)."""
    found = []
    for key in list(box.keys()):
        message = box.get_message(key)
        if message.get_subdir() != "new":
            continue
        found.append(summary(key, message))
        message.set_subdir("cur")
        message.add_flag("S")
        box[key] = message
    return found


def all_messages(box: mailbox.Maildir) -> list[dict[str, Any]]:
    items = []
    for key in box.keys():
        try:
            items.append(summary(key, box.get_message(key)))
        except (KeyError, FileNotFoundError):
            continue  # moved to cur/ by the worker while we listed: seen on the next call
    return sorted(items, key=lambda m: m["received_at"], reverse=True)


def digest(messages: list[dict[str, Any]], to: str) -> EmailMessage:
    """A digest mail listing `messages`, urgent ones first."""
    ordered = sorted(messages, key=lambda m: (not m["urgent"], m["received_at"]))
    lines = [f"{len(messages)} message(s) since the last digest:", ""]
    for m in ordered:
        lines.append(f"{'[URGENT] ' if m['urgent'] else ''}{m['subject']} (from {m['from']})")
        lines.append(f"    {m['preview']}")
    subject = f"Digest: {len(messages)} message(s)"
    return compose("email-agent@example.com", to, subject, "\n".join(lines))


def write_outbox(data_dir: Path, message: EmailMessage, stem: str) -> Path:
    """Write `message` to `outbox/<time>-<stem>.eml` (atomically) and return the path."""
    outbox = data_dir / "outbox"
    outbox.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = outbox / f"{stamp}-{re.sub(r'[^a-z0-9]+', '-', stem.lower()).strip('-')[:40]}.eml"
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(message.as_bytes())
    tmp.replace(target)
    return target
