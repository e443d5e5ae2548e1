from tests.hub.hub_cache import hub_cache, no_network  # noqa: F401  (fixtures register by name)
