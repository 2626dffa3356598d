"""Run and webhook messages: queue names, dramatiq's Redis broker and consumer, enqueueing, queue state."""
