"""The adapter service (``sgb adapter run``): native records in, deliveries out, receipts, retries
and dead letters, settings and the commands that manage them."""
