"""What a PLY header claims, read before any PLY library allocates arrays as large as those claims.

A small file that claims 10^12 vertices must end in one clear line, not a MemoryError: every PLY reader
(Gaussian scenes in every PLY layout, sparse point clouds) checks the claimed sizes against the file's size
with :func:`check_ply_sizes` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from splat2splat.errors import InputError

# The longest PLY header read: an INRIA header is ~2 KB; longer ones are not Gaussian scenes.
MAX_HEADER_BYTES = 1 << 16
PLY_TYPE_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
                  "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


@dataclass(frozen=True)
class PlyHeader:
    """What a PLY header claims: its format, and per element its row count and property names."""

    format: str  # "ascii", "binary_little_endian" or "binary_big_endian"
    elements: dict[str, tuple[int, tuple[str, ...]]]
    min_data_bytes: int  # the least data the elements need (binary: exact unless there are list properties)
    header_bytes: int


def read_ply_header(path: Path) -> PlyHeader | None:
    """Parse the header only (cheap, bounded); None when it is not a header this parser understands (plyfile
    then reports what is wrong)."""
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    end = head.find(b"end_header")
    if head.startswith(b"ply") and end < 0 and len(head) == MAX_HEADER_BYTES:
        # plyfile would read on, and then allocate whatever the header claims without a size check
        raise InputError(path, f"PLY header longer than {MAX_HEADER_BYTES // 1024} KB (a Gaussian scene's or point "
                               f"cloud's takes a few KB): refused")
    if not head.startswith(b"ply") or end < 0:
        return None
    newline = head.find(b"\n", end)
    try:
        lines = head[:end].decode("ascii").splitlines()
    except UnicodeDecodeError:
        return None
    format_name, elements, min_bytes, current = "", {}, 0, None
    for line in lines[1:]:
        words = line.split()
        if len(words) >= 2 and words[0] == "format":
            format_name = words[1]
        elif len(words) == 3 and words[0] == "element" and words[2].isdigit():
            current = words[1]
            # (a count of thousands of digits is no number Python converts, and more than any file holds)
            elements[current] = (int(words[2]) if len(words[2]) <= 30 else 10**30, ())
        elif len(words) >= 3 and words[0] == "property" and current is not None:
            count, names = elements[current]
            elements[current] = (count, (*names, words[-1]))
            # A list row holds at least its length; ASCII needs at least "v " per value.
            size = 2 if format_name == "ascii" else PLY_TYPE_SIZES.get(words[2 if words[1] == "list" else 1], 1)
            min_bytes += count * size
    return PlyHeader(format_name, elements, min_bytes, newline + 1 if newline >= 0 else len(head))


def check_ply_size(path: Path, header: PlyHeader | None, kind: str = "PLY") -> None:
    """Refuse a file whose header claims more rows than its size can hold, before anything is allocated."""
    if header is None:
        return
    available = path.stat().st_size - header.header_bytes
    if header.min_data_bytes > available:
        counts = ", ".join(f"{count} {name}" for name, (count, _) in header.elements.items())
        raise InputError(path, f"truncated or corrupt {kind}: the header claims {counts} rows "
                               f"({header.min_data_bytes} bytes at least) but only {available} bytes follow it")


def check_ply_sizes(path: str | Path, kind: str = "PLY") -> None:
    """:func:`check_ply_size` of the file's own header (an unparsable header is left to the PLY reader)."""
    path = Path(path)
    check_ply_size(path, read_ply_header(path), kind)
