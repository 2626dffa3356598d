"""Flow control: concurrency leases, rate limits and slot waiters in Redis."""
