#!/usr/bin/env python3
"""Draws the app icons into ringcentral_audit/static/ (standard library only, no network).

appIcon.png 36x36 and appIcon_2x.png 72x72: a white shield with a check mark on a blue rounded
square. appIconAlt.png / appIconAlt_2x.png: the same shield on a transparent background, for dark
backgrounds. Run it again after changing the drawing; the PNGs are committed.
"""

import math
import os
import struct
import zlib

BLUE = (6, 132, 225)
WHITE = (255, 255, 255)
SS = 4  # supersampling per axis, for anti-aliased edges


def png(width, height, rgba_rows):
    """A minimal PNG: 8-bit RGBA, no filtering, one IDAT chunk."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(row) for row in rgba_rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def in_rounded_square(x, y, radius=0.2):
    """Unit square [0,1]^2 with rounded corners."""
    if not (0 <= x <= 1 and 0 <= y <= 1):
        return False
    cx = min(max(x, radius), 1 - radius)
    cy = min(max(y, radius), 1 - radius)
    return (x - cx) ** 2 + (y - cy) ** 2 <= radius**2


def in_shield(x, y):
    """A shield: flat top with slightly lowered sides, straight flanks, pointed bottom."""
    top, bottom, left, right = 0.16, 0.88, 0.22, 0.78
    if not (left <= x <= right and top <= y <= bottom):
        return False
    # Top edge dips a little towards the middle.
    if y < top + 0.05 * (1 - abs(x - 0.5) / 0.28):
        return False
    # Lower half narrows along a curve to the point.
    knee = 0.52
    if y > knee:
        t = (y - knee) / (bottom - knee)
        half = 0.28 * math.sqrt(max(0.0, 1 - t * t))
        return abs(x - 0.5) <= half
    return True


def dist_to_segment(px, py, ax, ay, bx, by):
    dx, dy = bx - ax, by - ay
    t = max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
    return math.hypot(px - (ax + t * dx), py - (ay + t * dy))


def in_check(x, y):
    points = [(0.36, 0.50), (0.47, 0.61), (0.65, 0.38)]
    width = 0.055
    return any(dist_to_segment(x, y, *points[i], *points[i + 1]) <= width for i in range(2))


def pixel(x, y, alt):
    """Colour of one sample point, or None for transparent."""
    if alt:
        if in_shield(x, y):
            return BLUE if in_check(x, y) else WHITE
        return None
    if not in_rounded_square(x, y):
        return None
    if in_shield(x, y) and not in_check(x, y):
        return WHITE
    return BLUE


def render(size, alt):
    rows = []
    for py in range(size):
        row = []
        for px in range(size):
            acc = [0, 0, 0]
            covered = 0
            for sy in range(SS):
                for sx in range(SS):
                    c = pixel((px + (sx + 0.5) / SS) / size, (py + (sy + 0.5) / SS) / size, alt)
                    if c is not None:
                        covered += 1
                        for i in range(3):
                            acc[i] += c[i]
            if covered:
                row += [round(a / covered) for a in acc] + [round(255 * covered / (SS * SS))]
            else:
                row += [0, 0, 0, 0]
        rows.append(row)
    return png(size, size, rows)


def main():
    static = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ringcentral_audit", "static")
    os.makedirs(static, exist_ok=True)
    for name, size, alt in [
        ("appIcon.png", 36, False),
        ("appIcon_2x.png", 72, False),
        ("appIconAlt.png", 36, True),
        ("appIconAlt_2x.png", 72, True),
    ]:
        with open(os.path.join(static, name), "wb") as f:
            f.write(render(size, alt))


if __name__ == "__main__":
    main()
