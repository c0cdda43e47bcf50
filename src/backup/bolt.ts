import fsp, { type FileHandle } from 'node:fs/promises';

// A minimal read-only reader of bolt (bbolt) files, enough to read etcd's
// mvcc data out of a snapshot without etcd: which keys are live at the
// snapshot's revision, and their values. `etcdctl snapshot status` cannot say
// this (its totalKey counts every entry of every bucket: each revision of each
// key, tombstones, etcd's metadata), and the restore drill needs it to prove a
// restored member serves exactly what the file holds.
//
// The file is read page by page with positional async reads: memory is one
// page (a page with an overflowing value: that value's size), and the event
// loop is yielded between pages.
//
// bolt layout (bbolt 1.3, little-endian as written on amd64/arm64/ppc64le):
//   page     = header {id u64, flags u16, count u16, overflow u32} + data;
//              occupies (overflow + 1) * pageSize bytes at id * pageSize
//   meta     = pages 0 and 1: {magic u32, version u32, pageSize u32, flags u32,
//              root bucket {root u64, sequence u64}, freelist u64, pgid u64,
//              txid u64, checksum u64 (FNV-1a 64 of the 56 bytes before)};
//              the valid one with the higher txid wins
//   branch   = count × {pos u32, ksize u32, pgid u64}, key at element + pos
//   leaf     = count × {flags u32, pos u32, ksize u32, vsize u32}, key at
//              element + pos, value right after it; flags & 1 = a sub-bucket
//              whose value is {root u64, sequence u64}, root 0 = inline: the
//              bucket's single leaf page follows in the value itself
//
// etcd (mvcc): bucket "key" maps revision bytes {main u64 BE, '_', sub u64 BE}
// (+ 't' for a tombstone) to a mvccpb.KeyValue protobuf (1: key, 5: value);
// bucket "meta" holds "finishedCompactRev" as revision bytes.

const MAGIC = 0xed0cdaed;
const PAGE_HEADER = 16;
const ELEMENT = 16;
const BRANCH_PAGE = 0x01;
const LEAF_PAGE = 0x02;
const META_PAGE = 0x04;
const BUCKET_LEAF = 0x01;

export class BoltFormatError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BoltFormatError';
  }
}

/** A bucket: the root page of its B+tree, or its inline page (a buffer holding a page). */
type BucketRef = { root: number } | { inline: Buffer };

interface LeafEntry {
  key: Buffer;
  value: Buffer;
  flags: number;
}

export class BoltReader {
  private constructor(
    private readonly fh: FileHandle,
    readonly pageSize: number,
    readonly txid: bigint,
    private readonly rootRef: BucketRef,
    private readonly fileSize: number,
    private readonly highWater: number,
  ) {}

  static async open(file: string): Promise<BoltReader> {
    const fh = await fsp.open(file, 'r');
    try {
      const { size } = await fh.stat();
      const first = await readAt(fh, 0, Math.min(size, 4096 + 64));
      const m0 = parseMeta(first, 0);
      const pageSize = m0?.pageSize ?? guessPageSize(first);
      if (pageSize === undefined) throw new BoltFormatError('not a bolt file: no valid meta page');
      const second = await readAt(fh, pageSize, Math.min(Math.max(0, size - pageSize), 128));
      const m1 = parseMeta(second, 0);
      const metas = [m0, m1].filter((m): m is Meta => m !== undefined && m.pageSize === pageSize);
      if (metas.length === 0) throw new BoltFormatError('not a bolt file: neither meta page is valid');
      const meta = metas.reduce((a, b) => (b.txid > a.txid ? b : a));
      if (meta.root * pageSize >= size) throw new BoltFormatError(`root page ${meta.root} is beyond the end of the file`);
      return new BoltReader(fh, pageSize, meta.txid, { root: meta.root }, size, meta.pgid);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
  }

  /** One page (with its overflow pages). */
  private async page(id: number): Promise<Buffer> {
    if (!Number.isSafeInteger(id) || id < 2 || id >= this.highWater) throw new BoltFormatError(`page id ${id} out of range (high water ${this.highWater})`);
    const off = id * this.pageSize;
    if (off + PAGE_HEADER > this.fileSize) throw new BoltFormatError(`page ${id} is beyond the end of the file`);
    const head = await readAt(this.fh, off, PAGE_HEADER);
    const overflow = head.readUInt32LE(12);
    const len = (overflow + 1) * this.pageSize;
    if (off + len > this.fileSize) throw new BoltFormatError(`page ${id} (+${overflow} overflow) runs past the end of the file`);
    const buf = await readAt(this.fh, off, len);
    const pid = Number(buf.readBigUInt64LE(0));
    if (pid !== id) throw new BoltFormatError(`page ${id} says it is page ${pid}`);
    return buf;
  }

  /** Every key/value of a bucket, in key order. */
  async *entries(ref: BucketRef): AsyncGenerator<LeafEntry> {
    if ('inline' in ref) {
      yield* leafEntries(ref.inline, 0);
      return;
    }
    yield* this.walk(ref.root, 0);
  }

  private async *walk(id: number, depth: number): AsyncGenerator<LeafEntry> {
    if (depth > 64) throw new BoltFormatError('B+tree deeper than 64 levels: a cycle?');
    const p = await this.page(id);
    const flags = p.readUInt16LE(8);
    if (flags & LEAF_PAGE) {
      yield* leafEntries(p, 0);
      return;
    }
    if (!(flags & BRANCH_PAGE)) throw new BoltFormatError(`page ${id}: expected a branch or leaf page, flags 0x${flags.toString(16)}`);
    const count = p.readUInt16LE(10);
    const children: number[] = [];
    for (let i = 0; i < count; i++) children.push(Number(p.readBigUInt64LE(PAGE_HEADER + i * ELEMENT + 8)));
    for (const c of children) yield* this.walk(c, depth + 1);
  }

  /** The value stored under `key` in a bucket (a point lookup down the tree). */
  async get(ref: BucketRef, key: Buffer): Promise<LeafEntry | undefined> {
    let p: Buffer;
    let base = 0;
    if ('inline' in ref) p = ref.inline;
    else p = await this.page(ref.root);
    for (let depth = 0; depth < 64; depth++) {
      const flags = p.readUInt16LE(base + 8);
      const count = p.readUInt16LE(base + 10);
      if (flags & LEAF_PAGE) {
        for (const e of leafEntries(p, base)) if (e.key.equals(key)) return e;
        return undefined;
      }
      if (!(flags & BRANCH_PAGE)) throw new BoltFormatError(`expected a branch or leaf page, flags 0x${flags.toString(16)}`);
      // The last element whose key is <= the wanted key (the first one if none is).
      let child = Number(p.readBigUInt64LE(base + PAGE_HEADER + 8));
      for (let i = 0; i < count; i++) {
        const el = base + PAGE_HEADER + i * ELEMENT;
        const pos = p.readUInt32LE(el);
        const ksize = p.readUInt32LE(el + 4);
        const k = p.subarray(el + pos, el + pos + ksize);
        if (Buffer.compare(k, key) <= 0) child = Number(p.readBigUInt64LE(el + 8));
        else break;
      }
      p = await this.page(child);
      base = 0;
    }
    throw new BoltFormatError('B+tree deeper than 64 levels: a cycle?');
  }

  /** A top-level bucket by name. */
  async bucket(name: string): Promise<BucketRef | undefined> {
    const e = await this.get(this.rootRef, Buffer.from(name));
    if (!e) return undefined;
    if (!(e.flags & BUCKET_LEAF)) throw new BoltFormatError(`"${name}" is a key, not a bucket`);
    if (e.value.length < 16) throw new BoltFormatError(`bucket "${name}": short header`);
    const root = Number(e.value.readBigUInt64LE(0));
    if (root === 0) return { inline: Buffer.from(e.value.subarray(16)) };
    return { root };
  }
}

function* leafEntries(p: Buffer, base: number): Generator<LeafEntry> {
  const flags = p.readUInt16LE(base + 8);
  if (!(flags & LEAF_PAGE)) throw new BoltFormatError(`expected a leaf page, flags 0x${flags.toString(16)}`);
  const count = p.readUInt16LE(base + 10);
  for (let i = 0; i < count; i++) {
    const el = base + PAGE_HEADER + i * ELEMENT;
    if (el + ELEMENT > p.length) throw new BoltFormatError('leaf element beyond its page');
    const eflags = p.readUInt32LE(el);
    const pos = p.readUInt32LE(el + 4);
    const ksize = p.readUInt32LE(el + 8);
    const vsize = p.readUInt32LE(el + 12);
    const k0 = el + pos;
    if (k0 + ksize + vsize > p.length) throw new BoltFormatError('leaf key/value beyond its page');
    yield { flags: eflags, key: p.subarray(k0, k0 + ksize), value: p.subarray(k0 + ksize, k0 + ksize + vsize) };
  }
}

interface Meta {
  pageSize: number;
  root: number;
  pgid: number;
  txid: bigint;
}

function parseMeta(buf: Buffer, pageOff: number): Meta | undefined {
  const m = pageOff + PAGE_HEADER;
  if (buf.length < m + 64) return undefined;
  if (!(buf.readUInt16LE(pageOff + 8) & META_PAGE)) return undefined;
  if (buf.readUInt32LE(m) !== MAGIC || buf.readUInt32LE(m + 4) !== 2) return undefined;
  if (fnv1a64(buf.subarray(m, m + 56)) !== buf.readBigUInt64LE(m + 56)) return undefined;
  return { pageSize: buf.readUInt32LE(m + 8), root: Number(buf.readBigUInt64LE(m + 16)), pgid: Number(buf.readBigUInt64LE(m + 40)), txid: buf.readBigUInt64LE(m + 48) };
}

/** Page 0's meta is bad: bolt then trusts page 1, whose offset it finds from the page size it was written with. */
function guessPageSize(first: Buffer): number | undefined {
  return first.length >= PAGE_HEADER + 12 && first.readUInt32LE(PAGE_HEADER) === MAGIC ? first.readUInt32LE(PAGE_HEADER + 8) : 4096;
}

function fnv1a64(b: Buffer): bigint {
  let h = 0xcbf29ce484222325n;
  for (const x of b) {
    h ^= BigInt(x);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h;
}

async function readAt(fh: FileHandle, off: number, len: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(len);
  let got = 0;
  while (got < len) {
    const { bytesRead } = await fh.read(buf, got, len - got, off + got);
    if (bytesRead === 0) throw new BoltFormatError(`unexpected end of file at ${off + got}`);
    got += bytesRead;
  }
  return buf;
}

// --- etcd mvcc -------------------------------------------------------------

export interface EtcdDbContents {
  /** Keys live at the snapshot's revision (not deleted). */
  liveKeys: number;
  /** Highest main revision in the key bucket (what `etcdctl snapshot status` calls revision). */
  maxRevision: number;
  /** finishedCompactRev from the meta bucket (0 if never compacted). */
  compactRevision: number;
  /** The revision a member restored from this file reports: max(maxRevision, compactRevision), as mvcc's restore sets it. */
  revision: number;
  /** Entries in the key bucket (every revision of every key, tombstones included). */
  keyEntries: number;
  /** The first `sample` live keys in key order with their values. Keys are latin1-decoded bytes (byte order = string order). */
  sample: Map<string, Buffer>;
}

/**
 * Read etcd's key space out of a snapshot (or member/snap/db) file: one pass
 * over the key bucket to find each key's newest revision, then point lookups
 * for the sampled values.
 */
export async function readEtcdDb(file: string, opts: { sample?: number } = {}): Promise<EtcdDbContents> {
  const db = await BoltReader.open(file);
  try {
    const keyBucket = await db.bucket('key');
    const metaBucket = await db.bucket('meta');
    let compactRevision = 0;
    if (metaBucket) {
      const e = await db.get(metaBucket, Buffer.from('finishedCompactRev'));
      if (e && e.value.length >= 8) compactRevision = Number(e.value.readBigUInt64BE(0));
    }
    // key (latin1) -> revision bytes (latin1) of its newest entry, or '' when that entry is a tombstone.
    const newest = new Map<string, string>();
    let maxRevision = 0;
    let keyEntries = 0;
    if (keyBucket) {
      for await (const e of db.entries(keyBucket)) {
        if (e.flags & BUCKET_LEAF) continue;
        if (e.key.length !== 17 && e.key.length !== 18) throw new BoltFormatError(`key bucket: unexpected revision key of ${e.key.length} bytes`);
        keyEntries++;
        const main = Number(e.key.readBigUInt64BE(0));
        if (main > maxRevision) maxRevision = main;
        const tombstone = e.key.length === 18 && e.key[17] === 0x74; // 't'
        const kv = protoFields(e.value, [1]);
        const userKey = kv.get(1);
        if (userKey === undefined) throw new BoltFormatError(`key bucket: revision ${main} has no key`);
        newest.set(userKey.toString('latin1'), tombstone ? '' : e.key.toString('latin1'));
      }
    }
    const live: string[] = [];
    for (const [k, rev] of newest) if (rev !== '') live.push(k);
    const sample = new Map<string, Buffer>();
    const want = opts.sample ?? 0;
    if (want > 0 && keyBucket) {
      live.sort();
      for (const k of live.slice(0, want)) {
        const e = await db.get(keyBucket, Buffer.from(newest.get(k)!, 'latin1'));
        if (!e) throw new BoltFormatError('key bucket: a revision seen in the scan is not found by lookup');
        sample.set(k, Buffer.from(protoFields(e.value, [5]).get(5) ?? Buffer.alloc(0)));
      }
    }
    return { liveKeys: live.length, maxRevision, compactRevision, revision: Math.max(maxRevision, compactRevision), keyEntries, sample };
  } finally {
    await db.close();
  }
}

/** The length-delimited fields `want` of a protobuf message (first occurrence). */
function protoFields(b: Buffer, want: number[]): Map<number, Buffer> {
  const out = new Map<number, Buffer>();
  let i = 0;
  const varint = (): bigint => {
    let v = 0n;
    let shift = 0n;
    for (;;) {
      if (i >= b.length) throw new BoltFormatError('protobuf: truncated varint');
      const x = b[i++]!;
      v |= BigInt(x & 0x7f) << shift;
      if (!(x & 0x80)) return v;
      shift += 7n;
      if (shift > 63n) throw new BoltFormatError('protobuf: varint too long');
    }
  };
  while (i < b.length && out.size < want.length) {
    const tag = Number(varint());
    const field = tag >>> 3;
    const wire = tag & 7;
    if (wire === 0) varint();
    else if (wire === 2) {
      const len = Number(varint());
      if (i + len > b.length) throw new BoltFormatError('protobuf: field runs past the value');
      if (want.includes(field) && !out.has(field)) out.set(field, b.subarray(i, i + len));
      i += len;
    } else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else throw new BoltFormatError(`protobuf: unsupported wire type ${wire}`);
  }
  return out;
}
