"""Step 4, the decision: the partnership's rulebook (package data: ``rulebook.yaml`` and its
scenarios), the engine that applies it (:mod:`~broker.policy.engine`), the working-day calendar,
and the traceability of the rulebook to the guidance (:mod:`~broker.policy.coverage`)."""
