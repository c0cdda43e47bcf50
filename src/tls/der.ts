// Minimal DER writer for the CRL: only definite lengths and the handful of
// universal types a TBSCertList needs.
export function der(tag: number, ...parts: Uint8Array[]): Buffer {
  const body = Buffer.concat(parts);
  let len: Buffer;
  if (body.length < 0x80) {
    len = Buffer.from([body.length]);
  } else {
    const bytes: number[] = [];
    for (let n = body.length; n > 0; n = Math.floor(n / 256)) bytes.unshift(n & 0xff);
    len = Buffer.from([0x80 | bytes.length, ...bytes]);
  }
  return Buffer.concat([Buffer.from([tag]), len, body]);
}

/** DER INTEGER from an unsigned big-endian magnitude (sign byte added when needed). */
export function derInteger(magnitude: Uint8Array): Buffer {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  let body = Buffer.from(magnitude.subarray(start));
  if (body.length === 0) body = Buffer.from([0]);
  if ((body[0] ?? 0) & 0x80) body = Buffer.concat([Buffer.from([0]), body]);
  return der(0x02, body);
}

/** RFC 5280 Time: UTCTime through 2049, GeneralizedTime from 2050. */
export function derTime(d: Date): Buffer {
  const year = d.getUTCFullYear();
  const p = (n: number): string => String(n).padStart(2, '0');
  const rest = `${p(d.getUTCMonth() + 1)}${p(d.getUTCDate())}${p(d.getUTCHours())}${p(d.getUTCMinutes())}${p(d.getUTCSeconds())}Z`;
  if (year >= 1950 && year <= 2049) return der(0x17, Buffer.from(`${p(year % 100)}${rest}`, 'ascii'));
  return der(0x18, Buffer.from(`${String(year).padStart(4, '0')}${rest}`, 'ascii'));
}

/** The DER element at `offset`: where its contents start and where it ends (definite lengths only). */
export function derElement(buf: Uint8Array, offset: number): { tag: number; contents: number; end: number } {
  const tag = buf[offset];
  let lenByte = buf[offset + 1];
  if (tag === undefined || lenByte === undefined) throw new RangeError('DER: truncated element');
  let contents = offset + 2;
  let len = lenByte;
  if (lenByte & 0x80) {
    const n = lenByte & 0x7f;
    if (n === 0 || n > 4) throw new RangeError('DER: unsupported length');
    len = 0;
    for (let i = 0; i < n; i++) {
      lenByte = buf[contents + i];
      if (lenByte === undefined) throw new RangeError('DER: truncated length');
      len = len * 256 + lenByte;
    }
    contents += n;
  }
  const end = contents + len;
  if (end > buf.length) throw new RangeError('DER: element runs past the end');
  return { tag, contents, end };
}
