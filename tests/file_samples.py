"""The first bytes of files of known types, for the sniffing tests."""

from __future__ import annotations

PAD = b"\x00" * 200
VIDEOS = {
    "video/mp4": b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + PAD,
    "video/quicktime": b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  " + PAD,
    "video/webm": bytes.fromhex("1a45dfa39f4286810142f7810142f2810442f381084282847765626d") + PAD,
    "video/x-matroska": bytes.fromhex(
        "1a45dfa3a34286810142f7810142f2810442f3810842828" + "86d6174726f736b61"
    )
    + PAD,
    "video/x-msvideo": b"RIFF\x00\x10\x00\x00AVI LIST" + PAD,
    "video/mp2t": (b"\x47\x40\x00\x10" + b"\xff" * 184) * 5,
    "video/mpeg": b"\x00\x00\x01\xba\x44" + PAD,
}
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + PAD

EXE = b"MZ\x90\x00" + PAD
