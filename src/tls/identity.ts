import type { DetailedPeerCertificate, PeerCertificate, TLSSocket } from 'node:tls';

// The identity of a verified client certificate, in the terms allow rules and
// affinity keys use: CN, organizations (Kubernetes groups), DNS and URI SANs
// (SPIFFE IDs), and the SHA-256 fingerprint.

export interface Identity {
  cn: string;
  o: string[];
  dns: string[];
  uri: string[];
  fingerprint: string;
  serial: string;
}

export function identityOf(socket: TLSSocket): Identity | undefined {
  const cert = socket.getPeerCertificate(false) as PeerCertificate | DetailedPeerCertificate | Record<string, never>;
  if (!cert || !('raw' in cert) || cert.raw === undefined) return undefined;
  const subject = cert.subject as unknown as Record<string, string | string[] | undefined> | undefined;
  const san = parseSubjectAltName(cert.subjectaltname ?? '');
  return {
    cn: first(subject?.CN) ?? '',
    o: list(subject?.O),
    dns: san.dns,
    uri: san.uri,
    fingerprint: cert.fingerprint256,
    serial: cert.serialNumber.toUpperCase(),
  };
}

/** "CN=kube-apiserver-etcd-client,O=system:masters,URI=spiffe://…" for logs. */
export function describeIdentity(id: Identity): string {
  const parts = [`CN=${id.cn}`];
  for (const o of id.o) parts.push(`O=${o}`);
  for (const u of id.uri) parts.push(`URI=${u}`);
  return parts.join(',');
}

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

function list(v: string | string[] | undefined): string[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

/** Node prints SANs as `DNS:a, IP Address:1.2.3.4, URI:spiffe://x`; values may be quoted when they contain commas. */
export function parseSubjectAltName(text: string): { dns: string[]; uri: string[]; ip: string[] } {
  const out = { dns: [] as string[], uri: [] as string[], ip: [] as string[] };
  const re = /(DNS|URI|IP Address):("(?:[^"\\]|\\.)*"|[^,]*)(?:, |$)/g;
  for (const m of text.matchAll(re)) {
    let value = m[2]!;
    if (value.startsWith('"')) value = JSON.parse(value) as string;
    if (m[1] === 'DNS') out.dns.push(value);
    else if (m[1] === 'URI') out.uri.push(value);
    else out.ip.push(value);
  }
  return out;
}
