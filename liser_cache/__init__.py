"""LiSER's storage layer: content identity of clips (``identity``), the teacher-output store
(``store``), the decoded-clip cache (``clipcache``) and durable file writes (``files``).

It depends on nothing of ``liser_core``: the engine uses it, other tools can too.
"""
