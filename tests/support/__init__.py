"""What several test modules share: the worker's nats-server, signing in, sending, adapters."""
