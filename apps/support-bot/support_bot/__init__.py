"""support-bot: a ticket desk fed by aiops-bot's alerts and by users."""
