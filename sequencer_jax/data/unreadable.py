"""Why an image file cannot be decoded, in words.

TensorFlow's decoders fail with 'Graph execution error:', a stack, and at best a line such as
'jpeg::Uncompress failed. Invalid JPEG data or crop window.' (libjpeg's own reason goes to stderr).
`reason` reads the file's signature and structure instead, in pure Python: 'empty file',
'truncated JPEG', 'damaged PNG: bad checksum in its IHDR chunk', 'unsupported BMP: 1 bit(s) per
pixel', 'not an image (text)', 'not an image (unknown format)'. Where the structure looks sound,
the decoder's own message says the rest ('damaged PNG: Invalid PNG data, size 68').

It runs only on files that have already failed to decode, so its cost does not matter.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# The bit depths each PNG colour type allows (greyscale, RGB, palette, grey + alpha, RGBA).
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_JPEG_FRAMES = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_LOSSLESS_OR_HIERARCHICAL = {0xC3, 0xC5, 0xC6, 0xC7, 0xCB, 0xCD, 0xCE, 0xCF}
# Image formats that no decoder here reads.
_OTHER_FORMATS = ((b'II*\x00', 'TIFF'), (b'MM\x00*', 'TIFF'), (b'8BPS', 'Photoshop (PSD)'),
                  (b'\x00\x00\x00\x0cjP  \r\n\x87\n', 'JPEG 2000'),
                  (b'\xff\x4f\xff\x51', 'JPEG 2000'))
_HEIF_BRANDS = (b'heic', b'heix', b'hevc', b'heif', b'mif1', b'msf1', b'avif', b'avis')
# Parts of TensorFlow's messages that say nothing about the file: node names, op names.
_TF_NOISE = re.compile(r'\{\{[^}]*\}\}|\[\[.*?\]\]|\[Op:[^\]]*\].*$')
_TF_FRAMES = ('Graph execution error', 'Detected at node', 'File "')


def decoder_detail(message: str) -> str:
  """The meaningful line of a TensorFlow error message ('Input is empty'): its last one, without
  'Graph execution error:', the stack, node and op names; '' if none is left."""
  lines = (_TF_NOISE.sub('', line).strip() for line in message.splitlines())
  useful = [line for line in lines if line and not line.startswith(_TF_FRAMES)]
  return useful[-1].rstrip('.') if useful else ''


def _jpeg(data: bytes) -> str | None:
  """A fault in a JPEG's markers from its start through its first scan, or no end marker."""
  pos, frame = 2, None
  while True:
    if pos >= len(data):
      return 'truncated JPEG'
    if data[pos] != 0xFF:
      return f'damaged JPEG: no marker at byte {pos}'
    while pos < len(data) and data[pos] == 0xFF:  # A marker, after any fill bytes.
      pos += 1
    if pos >= len(data):
      return 'truncated JPEG'
    marker = data[pos]
    pos += 1
    if marker == 0xD9:
      return 'damaged JPEG: it ends before any image data'
    if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # Markers without a segment.
      continue
    if marker < 0xC0:
      return f'damaged JPEG: invalid marker 0x{marker:02X}'
    length = int.from_bytes(data[pos:pos + 2], 'big')
    if pos + 2 > len(data) or pos + length > len(data):
      return 'truncated JPEG'
    if marker in _JPEG_FRAMES:
      frame = marker
    if marker == 0xDA:  # The first scan: its entropy-coded data follow.
      if frame is None:
        return 'damaged JPEG: its image data come before its frame header'
      if frame in _JPEG_LOSSLESS_OR_HIERARCHICAL:
        return 'unsupported JPEG: lossless or hierarchical coding'
      break
    pos += length
  # Entropy-coded data stuff every 0xFF with 0x00, so 0xFFD9 is the end marker.
  return None if data.find(b'\xff\xd9', pos) >= 0 else 'truncated JPEG'


def _png_header(ihdr: bytes) -> str | None:
  width, height, depth, colour, compression, filtering, interlace = struct.unpack('>IIBBBBB', ihdr)
  if not width or not height:
    return 'damaged PNG: its header declares no pixels'
  if depth not in _PNG_DEPTHS.get(colour, ()):
    return f'unsupported PNG: colour type {colour} at bit depth {depth}'
  if compression or filtering or interlace > 1:
    return (f'unsupported PNG: compression, filter and interlace methods '
            f'{compression}, {filtering}, {interlace}')
  return None


def _png(data: bytes) -> str | None:
  """A fault in a PNG's chunks (lengths, checksums of the critical ones, IHDR first, IDAT, IEND)
  or in its compressed pixel data."""
  if not data.startswith(_PNG_SIGNATURE):
    return 'damaged PNG: its signature is altered (a text-mode transfer?)'
  pos, pixels = len(_PNG_SIGNATURE), None
  while True:
    if pos + 8 > len(data):
      return 'truncated PNG'
    length, kind = int.from_bytes(data[pos:pos + 4], 'big'), data[pos + 4:pos + 8]
    if length >= 1 << 31 or not kind.isalpha():
      return f'damaged PNG: no chunk header at byte {pos}'
    end = pos + 12 + length
    if end > len(data):
      return 'truncated PNG'
    body = data[pos + 8:end - 4]
    if kind[:1].isupper() and zlib.crc32(kind + body) != int.from_bytes(data[end - 4:end], 'big'):
      return f'damaged PNG: bad checksum in its {kind.decode()} chunk'
    if pos == len(_PNG_SIGNATURE):
      if kind != b'IHDR' or length != 13:
        return 'damaged PNG: it does not start with its header (IHDR)'
      fault = _png_header(body)
      if fault:
        return fault
    elif kind == b'IDAT':
      pixels = pixels or zlib.decompressobj()
      try:
        while body:  # Decompressed a MiB at a time, and discarded.
          pixels.decompress(body, 1 << 20)
          body = pixels.unconsumed_tail
      except zlib.error:
        return 'damaged PNG: its compressed pixel data are corrupt'
    elif kind == b'IEND':
      if pixels is None:
        return 'damaged PNG: it has no pixel data (IDAT)'
      return None if pixels.eof else 'damaged PNG: its compressed pixel data end early'
    pos = end


def _gif(data: bytes) -> str | None:
  return None if len(data) > 13 and data.endswith(b';') else 'truncated GIF'


def _bmp(data: bytes) -> str | None:
  """Truncation against the size the file declares, or what TensorFlow's BMP decoder lacks."""
  if len(data) < 34 or len(data) < int.from_bytes(data[2:6], 'little'):
    return 'truncated BMP'
  if int.from_bytes(data[14:18], 'little') < 40:
    return 'unsupported BMP: OS/2 1.x header'
  bits = int.from_bytes(data[28:30], 'little')
  if bits not in (8, 24, 32):
    return f'unsupported BMP: {bits} bit(s) per pixel'
  if int.from_bytes(data[30:34], 'little') in (1, 2, 4, 5):
    return 'unsupported BMP: compressed pixels (RLE, JPEG or PNG)'
  return None


def _webp(data: bytes) -> str | None:
  if len(data) < 16 or len(data) < int.from_bytes(data[4:8], 'little') + 8:
    return 'truncated WebP'
  if data[12:16] not in (b'VP8 ', b'VP8L', b'VP8X'):
    return 'damaged WebP: no VP8, VP8L or VP8X chunk'
  return None


# The formats the decoders read: name, signature test, structural check.
_DECODED: tuple[tuple[str, Callable[[bytes], bool], Callable[[bytes], str | None]], ...] = (
    ('JPEG', lambda d: d.startswith(b'\xff\xd8'), _jpeg),
    ('PNG', lambda d: d.startswith(b'\x89PNG'), _png),
    ('GIF', lambda d: d.startswith((b'GIF87a', b'GIF89a')), _gif),
    ('BMP', lambda d: d.startswith(b'BM'), _bmp),
    ('WebP', lambda d: d.startswith(b'RIFF') and d[8:12] == b'WEBP', _webp),
    ('JPEG XL', lambda d: d.startswith((b'\xff\x0a', b'\x00\x00\x00\x0cJXL \r\n\x87\n')),
     lambda d: None),
)


def _other_format(data: bytes) -> str | None:
  for signature, name in _OTHER_FORMATS:
    if data.startswith(signature):
      return name
  return 'HEIF or AVIF' if data[4:8] == b'ftyp' and data[8:12] in _HEIF_BRANDS else None


def _looks_like_text(data: bytes) -> bool:
  """No control characters but tab, newlines and form feed in the first KiB (UTF-8 is text)."""
  return not any(b < 32 and b not in b'\t\n\r\f' or b == 127 for b in data[:1024])


def reason(data: bytes, decoder_message: str | None = None) -> str:
  """Why `data`, which a decoder refused with `decoder_message`, is not a usable image, in words.

  The format comes from the signature, whatever the file's name says; the fault from the
  structure ('truncated JPEG', 'unsupported PNG: ...'); where the structure looks sound,
  'damaged <format>' and the meaningful line of the decoder's message.
  """
  if not data:
    return 'empty file'
  for name, matches, fault in _DECODED:
    if matches(data):
      found = fault(data)
      if found:
        return found
      detail = decoder_detail(decoder_message or '')
      return f'damaged {name}: {detail}' if detail else f'damaged {name}'
  other = _other_format(data)
  if other:
    return f'unsupported image format: {other}'
  return 'not an image (text)' if _looks_like_text(data) else 'not an image (unknown format)'
