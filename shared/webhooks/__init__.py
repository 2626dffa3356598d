"""Terminal-run webhooks: the outbox and Standard Webhooks signatures."""
