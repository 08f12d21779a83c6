"""The operator's live page (``/ui``): the fabric, the placement, traffic, decisions.

``api.ui.router.install_ui`` mounts it; docs/ui.md describes what it shows.
"""
