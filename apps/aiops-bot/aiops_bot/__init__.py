"""aiops-bot: watches the platform's apps and raises alerts on the event bus."""
