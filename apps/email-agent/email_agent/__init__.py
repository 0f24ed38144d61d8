"""email-agent: reads a maildir, writes digests and notifications to an outbox."""
