"""What LiSER's packages share that is not the engine: errors (``errors``), run folders and
their locks (``rundir``), resumable training state (``trainstate``), weight files
(``weights``), progress lines (``progress``), recipe fingerprints (``provenance``), process
groups (``distributed``), typed YAML files with precise errors (``typedyaml``), classification
metrics (``metrics``), model size and compute (``profile``) and audio-file checks (``audio``).

Nothing here knows what a teacher, a student or a clip is, and it imports nothing of
``liser_core``: the engine builds on it, and so can other tools.
"""

#: LiSER's version (pyproject.toml's), here so that run records below the engine can name it;
#: ``liser_core.__version__`` is this.
__version__ = "0.1.0"
