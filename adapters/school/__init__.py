"""The school's Operation Encompass inbox: notices kept sealed on disk and opened in memory for the
designated safeguarding lead (:mod:`~adapters.school.inbox`, :mod:`~adapters.school.store`)."""
