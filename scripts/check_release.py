#!/usr/bin/env python3
"""Check a tessera release tree: python check_release.py <release>/<version>/<target> [...]

For each target folder:
- every file listed in manifest.json exists with its size and SHA-256, and no file is unlisted;
- astropy opens every FITS file with warnings turned into errors, reads every HDU's data and
  builds the celestial WCS of every image HDU that has one, and the FITS checksums verify;
- every PNG is a real PNG (signature, IHDR, CRCs, inflated IDAT of the stated size) of the size the
  manifest records, and not blank: the quick look of a mosaic has more than 16 grey levels;
- every .tar.gz opens and holds PNG files only.
Prints one line per target and exits 1 on the first failure, naming the file.
"""
import hashlib
import json
import os
import struct
import sys
import tarfile
import warnings
import zlib


def fail(msg):
    print(f"check_release: FAIL: {msg}")
    sys.exit(1)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_png(path):
    """Width, height, channels and the raw (unfiltered) pixel bytes of an 8-bit grey or RGB PNG."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        fail(f"{path}: not a PNG (signature)")
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        if zlib.crc32(kind + body) & 0xFFFFFFFF != crc:
            fail(f"{path}: bad CRC in chunk {kind!r}")
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    if ihdr is None:
        fail(f"{path}: no IHDR")
    w, h, depth, colour = ihdr[:4]
    channels = {0: 1, 2: 3}.get(colour)
    if depth != 8 or channels is None:
        fail(f"{path}: depth {depth} colour type {colour}: expected 8-bit grey or RGB")
    raw = zlib.decompress(idat)
    stride = w * channels
    if len(raw) != h * (stride + 1):
        fail(f"{path}: {len(raw)} inflated bytes for {w}x{h}x{channels}")
    # undo the PNG filters (RFC 2083 section 6)
    out = bytearray()
    prev = bytearray(stride)
    for y in range(h):
        ft = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if ft == 1:
                line[i] = (line[i] + a) & 255
            elif ft == 2:
                line[i] = (line[i] + b) & 255
            elif ft == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
            elif ft != 0:
                fail(f"{path}: unknown PNG filter {ft}")
        out += line
        prev = line
    return w, h, channels, bytes(out)


def check_fits(path):
    from astropy.io import fits
    from astropy.wcs import WCS

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(path, checksum=True) as hdul:
            for hdu in hdul:
                _ = hdu.data
                if hdu.is_image and hdu.header.get("NAXIS", 0) == 2 and "CTYPE1" in hdu.header:
                    w = WCS(hdu.header)
                    if not w.has_celestial:
                        fail(f"{path}[{hdu.name}]: no celestial WCS")
                if "CHECKSUM" in hdu.header and not hdu.header.get("CHECKSUM"):
                    fail(f"{path}[{hdu.name}]: empty CHECKSUM")


def check_target(top):
    man_path = os.path.join(top, "manifest.json")
    with open(man_path) as f:
        man = json.load(f)
    listed = {e["path"]: e for e in man["files"]}
    found = set()
    for dirpath, _, files in os.walk(top):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), top)
            if rel != "manifest.json":
                found.add(rel)
    if found != set(listed):
        fail(f"{top}: files on disk and in the manifest differ: {sorted(found ^ set(listed))}")
    sizes = {b["quicklook"]: b["quicklook_px"] for b in man["bands"]}
    n_fits = n_png = 0
    for rel, e in sorted(listed.items()):
        p = os.path.join(top, rel)
        if os.path.getsize(p) != e["bytes"] or sha256(p) != e["sha256"]:
            fail(f"{p}: size or SHA-256 differs from the manifest")
        if rel.endswith(".fits"):
            check_fits(p)
            n_fits += 1
        elif rel.endswith(".png"):
            w, h, ch, px = read_png(p)
            if rel in sizes and [w, h] != sizes[rel]:
                fail(f"{p}: {w}x{h}, the manifest says {sizes[rel]}")
            if len(set(px)) <= 16:
                fail(f"{p}: {len(set(px))} grey levels: blank")
            n_png += 1
        elif rel.endswith(".tar.gz"):
            with tarfile.open(p, "r:gz") as t:
                for m in t.getmembers():
                    if not m.name.endswith(".png") or t.extractfile(m).read(8) != b"\x89PNG\r\n\x1a\n":
                        fail(f"{p}: member {m.name} is not a PNG")
    for b in man["bands"]:
        import numpy as np
        from astropy.io import fits

        with fits.open(os.path.join(top, b["mosaic"])) as hdul:
            sci = hdul["SCI"].data.astype(float)
        ny, nx = sci.shape
        blk = b["quicklook_block"]
        if b["quicklook_px"] != [-(-nx // blk), -(-ny // blk)]:
            fail(f"{b['quicklook']}: {b['quicklook_px']} for a {nx}x{ny} mosaic in blocks of {blk}")
        if blk == 1:
            # the picture of this mosaic: the asinh stretch recomputed here (0.5-99.5 percentile
            # range, astropy's AsinhStretch a = 0.1), within 2 grey levels at 99% of the pixels
            # (the PNG's top row is the mosaic's last)
            w, h, _, px = read_png(os.path.join(top, b["quicklook"]))
            grey = np.frombuffer(px, dtype=np.uint8).reshape(h, w)[::-1].astype(float)
            ok = np.isfinite(sci)
            v = np.sort(sci[ok])
            q = lambda p: v[min(int(round(p * (len(v) - 1))), len(v) - 1)]
            lo, hi = q(0.005), q(0.995)
            t = np.clip((sci[ok] - lo) / (hi - lo), 0, 1)
            want = 255 * np.arcsinh(t / 0.1) / np.arcsinh(10.0)
            close = np.mean(np.abs(want - grey[ok]) <= 2)
            if not close > 0.99 or np.any(grey[~ok] != 0):
                fail(f"{b['quicklook']}: {close:.3f} of the pixels match the stretched mosaic: not its picture")
    print(f"check_release: OK {top}: {len(listed)} files ({n_fits} FITS, {n_png} PNG) verified")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        fail("usage: check_release.py <release>/<version>/<target> [...]")
    for top in sys.argv[1:]:
        check_target(top)
