"""The agency side: the SDK agency systems use (:mod:`adapters.sdk`), the native formats each kind
of agency speaks (:mod:`adapters.formats`), the school's Operation Encompass inbox
(:mod:`adapters.school`) and the adapter service that runs them (:mod:`adapters.runtime`)."""
