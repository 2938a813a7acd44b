"""What LiSER's packages share that is not the engine: errors (``errors``), run folders and
their locks (``rundir``), progress lines (``progress``), recipe fingerprints (``provenance``),
model size and compute (``profile``), process groups (``distributed``), typed YAML files with
precise errors (``typedyaml``) and audio-file checks (``audio``).

Nothing here knows what a teacher, a student or a clip is, and it imports nothing of
``liser_core``: the engine builds on it, and so can other tools.
"""
