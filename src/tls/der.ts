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
