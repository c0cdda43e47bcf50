/** SO_REUSEPORT for TCP listeners (`listen({ reusePort })`) arrived in Node.js 22.12 and 23.1. */
export function reusePortSupported(v = process.versions.node): boolean {
  const [major, minor] = v.split('.').map(Number) as [number, number];
  return major > 23 || (major === 23 && minor >= 1) || (major === 22 && minor >= 12);
}
