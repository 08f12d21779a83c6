"""The OpenAI-compatible P/D gateway: clients send OpenAI requests, toposched picks the
(prefill, decode) engine pair and runs the engines' own P/D protocol (:mod:`engines.pd`).

* :mod:`api.gateway.instances` — the engines it routes to, and which are out of routing;
* :mod:`api.gateway.tokens` — token ids for prefix routing (local tokenizer or /tokenize);
* :mod:`api.gateway.decide` — the pair, conditional disaggregation, compatibility;
* :mod:`api.gateway.relay` — one request end to end: load, legs, streaming, measurement;
* :mod:`api.routers.openai` — the HTTP endpoints.

docs/gateway.md describes the behaviour.
"""
