"""The one-command demo: scheduler, sidecars with fake engines, an agentic request stream."""
