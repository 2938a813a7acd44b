"""Reading audio files: checks every reader shares (the corpora, ``liser predict``)."""

from __future__ import annotations

from pathlib import Path


def wav_truncation(path: Path) -> str | None:
    """Why a RIFF/WAVE file is cut short (its ``data`` chunk declares more bytes than the file
    holds), or None. libsndfile reads such files without complaint, returning what is there."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            cid, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if cid == b"data":
                have = size - pos - 8
                if length not in (0, 0xFFFFFFFF) and length > have:  # 0/-1: streamed, size unknown
                    return f"truncated (the header declares {length} bytes of samples, the file holds {have})"
                return None
            pos += 8 + length + (length & 1)
    return None
