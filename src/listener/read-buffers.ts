import { Socket } from 'node:net';

// Where plain TCP and unix sockets read into. Node's default allocates a new
// 64 KiB buffer for every read, wraps it, shrinks it, and leaves it to the
// garbage collector: for a proxy, whose whole job is read-then-write, that
// allocation and its GC are a large part of the cost per byte. Node's
// `onread` option lets a socket read into memory it is given instead.
//
// Two kinds of read buffer:
//
// - SHARED, one 64 KiB buffer every calm socket reads into. A read from it is
//   copied out (to a right-sized buffer, usually a slice of Node's pool)
//   before it is written on, because a write the kernel does not take at once
//   keeps a reference to its bytes, and the next read of *any* socket would
//   overwrite them. Idle connections therefore hold no read memory at all.
// - Private buffers (256 KiB), leased from a bounded pool to a socket whose
//   reads come in large (a bulk stream). Its bytes are written on without a
//   copy; if the write does not complete at once the socket stops reading
//   until it has, so the buffer is never overwritten while a write holds it.
//   A socket whose reads turn small gives its buffer back; so does a closed
//   connection. When the pool is spent, sockets stay on SHARED: slower, never
//   wrong.
//
// Accepted sockets have no public `onread` (net.Server does not pass it on),
// so they are adopted: the server accepts paused, and the same internal
// fields a `net.Socket({ onread })` sets are set on the accepted socket
// before it reads its first byte. The fields are found by their names at
// startup; if a Node release renames them, `userBufferSupported` is false
// and accepted sockets use ordinary 'data' events (the test suite fails on
// that, so it is noticed, not silent).

/** Size of the buffer calm sockets share, and of Node's own reads. */
export const SHARED_READ_SIZE = 64 * 1024;
/** Size of a leased (private) read buffer. */
export const PRIVATE_READ_SIZE = 256 * 1024;
/** A read at least this large moves a socket onto a private buffer. */
export const BUSY_READ = 16 * 1024;
/** A read smaller than this gives the private buffer back. */
export const CALM_READ = 4 * 1024;
/** At most this many private buffers exist (leased or free): 64 MiB. */
export const PRIVATE_MAX = 256;
/** Free private buffers kept for reuse; the rest are left to the GC. */
const FREE_MAX = 16;

export const SHARED = Buffer.allocUnsafeSlow(SHARED_READ_SIZE);

const free: Buffer[] = [];
let leased = 0;
let privateMax = PRIVATE_MAX;

/** A private read buffer, or undefined when the pool is spent. */
export function leaseReadBuffer(): Buffer | undefined {
  if (leased >= privateMax) return undefined;
  leased++;
  return free.pop() ?? Buffer.allocUnsafeSlow(PRIVATE_READ_SIZE);
}

/** Give back a private buffer nothing reads into or writes from any more. */
export function releaseReadBuffer(b: Buffer): void {
  leased--;
  if (free.length < FREE_MAX) free.push(b);
}

/** Tests: a smaller pool, so spent-pool paths run with a few connections. Returns the old limit. */
export function limitPrivateReadBuffers(n: number): number {
  const old = privateMax;
  privateMax = n;
  return old;
}

/**
 * One direction of a connection on a private buffer: the buffer, whether a
 * write that does not finish at once still holds it (its socket is then not
 * reading), and the write callback that lets it read again. Made when the
 * direction leases a buffer, not per chunk.
 */
export class ReadLease {
  held = false;
  constructor(
    readonly buf: Buffer,
    readonly written: () => void,
  ) {}
}

/** For metrics and tests: private buffers leased to sockets now, and kept free. */
export function readBufferStats(): { leased: number; free: number } {
  return { leased, free: free.length };
}

/** Called for every read of an adopted socket, with `this` the socket; false stops reading. */
export type ReadCallback = (this: Socket, nread: number, buf: Buffer) => boolean;

interface UserBufferFields {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

/** The internal fields behind `onread`, read off a throwaway socket. */
function findUserBufferFields(): UserBufferFields | undefined {
  try {
    // @types/node lists onread for connect options only; the constructor takes it.
    const probe = new Socket({ onread: { buffer: () => SHARED, callback: () => true } } as ConstructorParameters<typeof Socket>[0]);
    const byName = new Map(Object.getOwnPropertySymbols(probe).map((s) => [s.description, s]));
    probe.destroy();
    const buffer = byName.get('kBuffer');
    const callback = byName.get('kBufferCb');
    const generator = byName.get('kBufferGen');
    if (buffer === undefined || callback === undefined || generator === undefined) return undefined;
    const p = probe as unknown as Record<symbol, unknown>;
    if (p[buffer] !== true || typeof p[callback] !== 'function' || typeof p[generator] !== 'function') return undefined;
    return { buffer, callback, generator };
  } catch {
    return undefined;
  }
}

const fields = findUserBufferFields();

/** Whether accepted sockets can read into ballast's buffers on this Node. */
export const userBufferSupported = fields !== undefined;

/**
 * Make an accepted socket, not yet reading (server `pauseOnConnect`), read
 * into SHARED and then into whatever `next()` returns after each read, with
 * `callback` in place of 'data' events. Reading starts at `resume()`.
 * Returns false (and changes nothing) if the socket cannot be adopted.
 */
export function adoptAcceptedSocket(s: Socket, callback: ReadCallback, next: () => Buffer): boolean {
  const handle = (s as unknown as { _handle?: { reading?: boolean; useUserBuffer?: (b: Uint8Array) => void } | null })._handle;
  if (fields === undefined || handle == null || typeof handle.useUserBuffer !== 'function' || handle.reading === true) return false;
  const f = s as unknown as Record<symbol, unknown>;
  f[fields.buffer] = SHARED;
  f[fields.callback] = callback;
  f[fields.generator] = next;
  handle.useUserBuffer(SHARED);
  return true;
}
