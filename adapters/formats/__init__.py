"""The native formats each kind of agency speaks, mapped to and from canonical messages: police
PPNs, HL7 FHIR R4 for health, case events of the local authority's system; the consent facts each
record carries; and the native schemas (``native/``)."""
