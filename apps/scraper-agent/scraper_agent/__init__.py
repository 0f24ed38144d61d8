"""scraper-agent: fetches web pages and publishes what it found on the event bus."""
