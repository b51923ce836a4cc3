"""How messages move: the embedded nats-server and its supervision, connections, the streams and
consumers of the wire contract, the publisher that waits for JetStream, and the replay guard."""
