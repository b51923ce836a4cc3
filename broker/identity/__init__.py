"""Who each party is: private keys under the data directory (:mod:`~broker.identity.keys`), key
rotation, the development partnership (:mod:`~broker.identity.devkeys`), NATS credentials and
permissions (:mod:`~broker.identity.natsauth`), and the keyed blind index of children's identifiers
(:mod:`~broker.identity.blindindex`)."""
