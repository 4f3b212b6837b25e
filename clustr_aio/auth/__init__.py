"""Who may do what: API keys (hashed, in the catalog), scopes, owners and quotas, rate limits,
signed file URLs. Nothing here knows HTTP: refusals are domain errors carrying their status
(:mod:`clustr_aio.domain.errors`), which ``web/`` turns into responses."""
