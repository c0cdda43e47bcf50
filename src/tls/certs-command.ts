// `ballast certs`: a small PKI for labs, CI and the demo, producing a CA plus
// etcd/kube-apiserver style server, client and peer certificates on disk.

import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { access, mkdir, open, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { createCA, issueCert, loadCA, type CertAuthority, type CertUsage, type IssueOptions, type KeyAlgorithm } from './certs.js';

export const CERTS_USAGE = `Usage: ballast certs --out DIR [options]

Creates (or reuses) a CA in DIR and issues certificates signed by it.

Options:
  --out DIR                 output directory (created with mode 0700 if missing)
  --algorithm ALG           ecdsa-p256 (default) or rsa-2048; applies to the CA
                            when one is created, and to every issued key
  --days N                  validity of issued certificates in days (default 365);
                            a new CA is valid for max(3650, N) days
  --ca-cn NAME              common name of a newly created CA (default ballast-ca)
  --server NAME[:SAN,...]   server certificate NAME.crt/NAME.key with serverAuth
                            and clientAuth (etcd needs both); SANs default to
                            localhost,127.0.0.1,::1
  --peer NAME[:SAN,...]     peer certificate (same usages as --server)
  --client NAME[:ITEM,...]  client certificate with clientAuth, CN=NAME
  --force                   overwrite existing certificate/key files
  -h, --help                show this help

SAN/ITEM forms (comma separated):
  O=GROUP        organization, i.e. a Kubernetes group (O=system:masters)
  uri:URI        URI SAN (uri:spiffe://cluster.local/ns/NS/sa/NAME)
  dns:NAME       DNS SAN
  ip:ADDR        IP SAN
  ADDR or NAME   IP SAN if it parses as an IP address, DNS SAN otherwise

If DIR/ca.crt and DIR/ca.key exist the CA is reused. Without --server,
--client or --peer one server "server" and one client "client" are issued.
Keys are written with mode 0600.

Examples:
  ballast certs --out ./pki --server etcd-0:localhost,127.0.0.1,::1 \\
    --client kube-apiserver-etcd-client:O=system:masters
  ballast certs --out ./pki --client ballast:uri:spiffe://cluster.local/ns/kube-system/sa/ballast`;

export interface CertsCommandOutput {
  log(line: string): void;
  /** Error lines; when absent they go to log(). */
  error?(line: string): void;
}

/** A usage problem: exit code 2. */
class UsageError extends Error {}
/** A problem with the files on disk: exit code 1. */
class FileError extends Error {}

interface LeafSpec {
  kind: 'server' | 'peer' | 'client';
  name: string;
  opts: Omit<IssueOptions, 'algorithm' | 'validDays'>;
}

const DEFAULT_SERVER_SANS = ['localhost', '127.0.0.1', '::1'];
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const MAX_DAYS = 36500;

const defaultOutput: CertsCommandOutput = {
  log: (line) => process.stdout.write(`${line}\n`),
  error: (line) => process.stderr.write(`${line}\n`),
};

export async function runCertsCommand(argv: string[], out: CertsCommandOutput = defaultOutput): Promise<number> {
  const fail = (line: string): void => (out.error ? out.error(line) : out.log(line));
  try {
    return await run(argv, out);
  } catch (err) {
    if (err instanceof UsageError) {
      fail(`ballast certs: ${err.message}`);
      fail(`Run 'ballast certs --help' for usage.`);
      return 2;
    }
    const message = err instanceof Error ? err.message : String(err);
    fail(`ballast certs: ${message}`);
    return 1;
  }
}

async function run(argv: string[], out: CertsCommandOutput): Promise<number> {
  let values: {
    out?: string;
    algorithm?: string;
    days?: string;
    'ca-cn'?: string;
    server?: string[];
    client?: string[];
    peer?: string[];
    force?: boolean;
    help?: boolean;
  };
  try {
    ({ values } = parseArgs({
      args: argv,
      allowPositionals: false,
      strict: true,
      options: {
        out: { type: 'string' },
        algorithm: { type: 'string' },
        days: { type: 'string' },
        'ca-cn': { type: 'string' },
        server: { type: 'string', multiple: true },
        client: { type: 'string', multiple: true },
        peer: { type: 'string', multiple: true },
        force: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    // parseArgs throws TypeErrors with ERR_PARSE_ARGS_* codes for unknown
    // options, missing values and positionals; they are all usage errors.
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }

  if (values.help) {
    out.log(CERTS_USAGE);
    return 0;
  }

  const dir = values.out;
  if (dir === undefined || dir === '') {
    throw new UsageError('--out: missing; pass the directory to write certificates to, e.g. --out ./pki');
  }
  const algorithm = parseAlgorithm(values.algorithm);
  const days = parseDays(values.days);
  const caCn = values['ca-cn'];
  if (caCn !== undefined && caCn.trim() === '') {
    throw new UsageError('--ca-cn: expected a non-empty common name, e.g. --ca-cn my-cluster-ca');
  }

  const leaves: LeafSpec[] = [
    ...(values.server ?? []).map((v) => parseLeaf('server', v)),
    ...(values.peer ?? []).map((v) => parseLeaf('peer', v)),
    ...(values.client ?? []).map((v) => parseLeaf('client', v)),
  ];
  if (leaves.length === 0) {
    leaves.push(parseLeaf('server', 'server'), parseLeaf('client', 'client'));
  }
  const seen = new Map<string, string>();
  for (const leaf of leaves) {
    const prev = seen.get(leaf.name);
    if (prev !== undefined) {
      throw new UsageError(
        `--${leaf.kind} ${leaf.name}: the name is already used by --${prev}; each certificate needs its own name (it becomes the file name)`,
      );
    }
    seen.set(leaf.name, leaf.kind);
  }

  // Everything that can be refused is checked before any key is generated or
  // file written, so a refused run leaves the directory untouched.
  const caCrt = join(dir, 'ca.crt');
  const caKey = join(dir, 'ca.key');
  const [haveCrt, haveKey] = await Promise.all([exists(caCrt), exists(caKey)]);
  if (haveCrt !== haveKey) {
    const [has, lacks] = haveCrt ? [caCrt, caKey] : [caKey, caCrt];
    throw new FileError(`${has} exists but ${lacks} does not; restore ${lacks}, or remove ${has} to create a new CA`);
  }
  if (!values.force) {
    const existing: string[] = [];
    for (const leaf of leaves) {
      for (const ext of ['crt', 'key']) {
        const p = join(dir, `${leaf.name}.${ext}`);
        if (await exists(p)) existing.push(p);
      }
    }
    if (existing.length > 0) {
      throw new FileError(`${existing.join(', ')} already exist${existing.length === 1 ? 's' : ''}; pass --force to overwrite`);
    }
  }

  let ca: CertAuthority;
  let createdCa = false;
  if (haveCrt) {
    let certPem: string;
    let keyPem: string;
    try {
      [certPem, keyPem] = await Promise.all([readFile(caCrt, 'utf8'), readFile(caKey, 'utf8')]);
    } catch (err) {
      throw new FileError(`cannot read the existing CA in ${dir}: ${errMessage(err)}`);
    }
    try {
      ca = await loadCA(certPem, keyPem);
    } catch (err) {
      throw new FileError(`${caCrt}/${caKey}: ${errMessage(err)}; fix them, or remove both to create a new CA`);
    }
    if (caCn !== undefined && ca.subject !== `CN=${caCn}`) {
      throw new UsageError(
        `--ca-cn ${caCn}: ${caCrt} already exists with subject ${ca.subject}; drop --ca-cn to reuse it, or remove ca.crt and ca.key to create a new CA`,
      );
    }
    out.log(`reusing CA ${caCrt} (${ca.subject})`);
  } else {
    ca = await createCA({ cn: caCn ?? 'ballast-ca', algorithm, validDays: Math.max(3650, days) });
    createdCa = true;
  }

  const issued: { leaf: LeafSpec; cert: string; key: string }[] = [];
  for (const leaf of leaves) {
    try {
      const c = await issueCert(ca, { ...leaf.opts, algorithm, validDays: days });
      issued.push({ leaf, cert: c.cert, key: c.key });
    } catch (err) {
      // Bad SAN values surface here (issueCert validates them).
      throw new UsageError(`--${leaf.kind} ${leaf.name}: ${errMessage(err)}`);
    }
  }

  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new FileError(`cannot create ${dir}: ${errMessage(err)}`);
  }
  if (createdCa) {
    await writeOutput(caCrt, ca.cert, 0o644, false);
    out.log(`wrote ${caCrt} (CA, ${ca.subject})`);
    await writeOutput(caKey, ca.key, 0o600, false);
    out.log(`wrote ${caKey}`);
  }
  for (const { leaf, cert, key } of issued) {
    const crtPath = join(dir, `${leaf.name}.crt`);
    const keyPath = join(dir, `${leaf.name}.key`);
    await writeOutput(crtPath, cert, 0o644, values.force === true);
    out.log(`wrote ${crtPath} (${describe(leaf)})`);
    await writeOutput(keyPath, key, 0o600, values.force === true);
    out.log(`wrote ${keyPath}`);
  }
  return 0;
}

function parseAlgorithm(value: string | undefined): KeyAlgorithm {
  if (value === undefined) return 'ecdsa-p256';
  if (value === 'ecdsa-p256' || value === 'rsa-2048') return value;
  throw new UsageError(`--algorithm: expected ecdsa-p256 or rsa-2048, got ${JSON.stringify(value)}`);
}

function parseDays(value: string | undefined): number {
  if (value === undefined) return 365;
  const n = /^\d+$/.test(value) ? Number(value) : NaN;
  if (!Number.isSafeInteger(n) || n < 1 || n > MAX_DAYS) {
    throw new UsageError(`--days: expected a whole number of days between 1 and ${MAX_DAYS}, got ${JSON.stringify(value)}`);
  }
  return n;
}

function parseLeaf(kind: LeafSpec['kind'], spec: string): LeafSpec {
  const colon = spec.indexOf(':');
  const name = colon === -1 ? spec : spec.slice(0, colon);
  const list = colon === -1 ? undefined : spec.slice(colon + 1);
  if (!NAME_RE.test(name) || name === 'ca') {
    throw new UsageError(
      `--${kind} ${JSON.stringify(spec)}: NAME must start with a letter or digit and contain only letters, digits, '.', '_' and '-' ` +
        `(it becomes NAME.crt/NAME.key), and must not be "ca"`,
    );
  }
  const items = list === undefined ? (kind === 'client' ? [] : DEFAULT_SERVER_SANS) : list.split(',');
  const opts: LeafSpec['opts'] = {
    cn: name,
    usage: kind === 'client' ? ['client'] : (['server', 'client'] satisfies CertUsage[]),
  };
  const o: string[] = [];
  const dns: string[] = [];
  const ips: string[] = [];
  const uris: string[] = [];
  for (const raw of items) {
    const item = raw.trim();
    const lower = item.toLowerCase();
    if (item === '') {
      throw new UsageError(`--${kind} ${spec}: empty item in the list; separate items with single commas`);
    } else if (lower.startsWith('o=')) {
      if (item.length === 2) throw new UsageError(`--${kind} ${spec}: O= needs a group name, e.g. O=system:masters`);
      o.push(item.slice(2));
    } else if (lower.startsWith('uri:')) {
      uris.push(item.slice(4));
    } else if (lower.startsWith('dns:')) {
      dns.push(item.slice(4));
    } else if (lower.startsWith('ip:')) {
      const ip = item.slice(3);
      if (isIP(ip) === 0) throw new UsageError(`--${kind} ${spec}: ${JSON.stringify(ip)} after ip: is not an IP address`);
      ips.push(ip);
    } else if (isIP(item) !== 0) {
      ips.push(item);
    } else if (item.includes(':') || item.includes('=')) {
      // A forgotten prefix would otherwise become a bogus DNS SAN.
      throw new UsageError(
        `--${kind} ${spec}: ${JSON.stringify(item)} is not a DNS name or IP address; write O=GROUP, uri:URI, dns:NAME or ip:ADDR`,
      );
    } else {
      dns.push(item);
    }
  }
  if (o.length) opts.o = o;
  if (dns.length) opts.dns = dns;
  if (ips.length) opts.ips = ips;
  if (uris.length) opts.uris = uris;
  return { kind, name, opts };
}

function describe(leaf: LeafSpec): string {
  const parts = [`${leaf.kind}, CN=${leaf.opts.cn}`];
  if (leaf.opts.o?.length) parts.push(leaf.opts.o.map((o) => `O=${o}`).join(' '));
  const sans = [
    ...(leaf.opts.dns ?? []).map((d) => `DNS:${d}`),
    ...(leaf.opts.ips ?? []).map((ip) => `IP:${ip}`),
    ...(leaf.opts.uris ?? []).map((u) => `URI:${u}`),
  ];
  if (sans.length) parts.push(`SAN ${sans.join(' ')}`);
  return parts.join(', ');
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path, fsConstants.F_OK);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw new FileError(`cannot check ${path}: ${errMessage(err)}`);
  }
}

/**
 * Writes a file that is never readable beyond `mode`, not even briefly: the
 * mode is applied by open(2) at creation. Without overwrite the target is
 * created with O_EXCL, so a file that appeared since the pre-check is never
 * clobbered. With overwrite a fresh temp file is renamed over the target,
 * because reopening an existing key would keep its old (maybe 0644) mode.
 */
async function writeOutput(path: string, content: string, mode: number, overwrite: boolean): Promise<void> {
  const target = overwrite ? `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp` : path;
  let handle: FileHandle;
  try {
    handle = await open(target, 'wx', mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new FileError(`${path} already exists; pass --force to overwrite`);
    }
    throw new FileError(`cannot create ${path}: ${errMessage(err)}`);
  }
  try {
    await handle.writeFile(content);
    await handle.sync();
  } catch (err) {
    await handle.close().catch(() => undefined);
    await unlink(target).catch(() => undefined);
    throw new FileError(`cannot write ${path}: ${errMessage(err)}`);
  }
  await handle.close();
  if (overwrite) {
    try {
      await rename(target, path);
    } catch (err) {
      await unlink(target).catch(() => undefined);
      throw new FileError(`cannot replace ${path}: ${errMessage(err)}`);
    }
  }
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
