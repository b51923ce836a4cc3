"""The running broker: the loop over the ingress consumer (:mod:`~broker.pipeline.loop`), steps
1-3 (:mod:`~broker.pipeline.intake`), steps 5-6 (:mod:`~broker.pipeline.outcomes`), deadlines,
retention, metrics, and the service that wires them together (:mod:`~broker.pipeline.service`)."""
