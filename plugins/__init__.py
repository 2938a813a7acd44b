"""LiSER's first-party plugins (importable as ``liser_plugins``).

Each subpackage is one plugin, declared in ``pyproject.toml`` under
``[project.entry-points.liser]`` exactly as a third-party plugin would be.
"""
