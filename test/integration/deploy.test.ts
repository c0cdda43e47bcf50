import { execFile } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { PodMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Pod } from 'kubernetes-models/v1/Pod';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { collectDefaultMetrics, Histogram, Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { METRICS, Metrics } from '../../src/admin/metrics.js';
import type { Ballast } from '../../src/ballast.js';
import { metricNames } from '../support/promql.js';
import { createCA, createCRL, issueCert, type CertAuthority, type CertUsage } from '../../src/tls/certs.js';

// deploy/ is what operators copy onto control-plane nodes at 3 a.m.: every
// manifest must be a valid Kubernetes object, every ballast config must pass
// check-config, the pieces must agree with each other (ports, paths, flags,
// certificate identities), and every alert and panel must query a metric
// ballast really exports.

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const DEPLOY = path.join(REPO, 'deploy');
const CLI = path.join(REPO, 'dist/cli.js');
const run = promisify(execFile);

// Manifests are walked generically; `any` keeps the walking readable.
type J = any;

const IMAGE_PREFIX = 'ghcr.io/ballast-proxy/ballast:';
const CONFIG_ARGS = ['run', '--config', '/etc/ballast/ballast.yaml'];
const HOST_CONFIG_DIR = '/etc/kubernetes/ballast';
const PATCHES_DIR = '/etc/kubernetes/ballast/kubeadm-patches';
const PKI = '/etc/kubernetes/pki';

const rel = (f: string) => path.relative(REPO, f);
const read = (f: string) => readFileSync(f, 'utf8');

function walk(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? walk(path.join(dir, e.name)) : [path.join(dir, e.name)]))
    .sort();
}

/** Every YAML document of a file, as plain JS; a syntax error names the file and line. */
function yamlDocs(file: string): J[] {
  return YAML.parseAllDocuments(read(file)).map((d, i) => {
    if (d.errors.length > 0) throw new Error(`${rel(file)} document ${i + 1}: ${d.errors.map((e) => e.message).join('; ')}`);
    return d.toJS() as J;
  });
}
const yamlDoc = (file: string): J => {
  const docs = yamlDocs(file);
  expect(docs, `${rel(file)} should hold one YAML document`).toHaveLength(1);
  return docs[0];
};

// --- Kubernetes schema validation, strict ------------------------------------

interface ModelClass {
  prototype: { validate(): void };
}

/**
 * Validates `obj` with a kubernetes-models class AND reports fields the schema
 * does not know. The generated validators ignore unknown fields (as the API
 * server's non-strict decoding does), so a typo such as `readOnlyRootFileSystem`
 * would pass silently. They do read every field the schema declares, so a
 * field they never read is unknown: the object is wrapped in proxies that
 * record each read.
 */
function strictValidate(model: ModelClass, obj: J, where: string): string[] {
  const seen = new WeakMap<object, Set<string> | 'all'>();
  const proxies = new WeakMap<object, object>();
  const mark = (t: object, k: string | symbol) => {
    if (typeof k !== 'string') return;
    const s = seen.get(t);
    if (s === 'all') return;
    if (s) s.add(k);
    else seen.set(t, new Set([k]));
  };
  const wrap = (v: unknown): unknown => {
    if (v === null || typeof v !== 'object') return v;
    const cached = proxies.get(v);
    if (cached) return cached;
    const p = new Proxy(v, {
      get(t, k, r) {
        if (!Array.isArray(t)) mark(t, k);
        return wrap(Reflect.get(t, k, r));
      },
      has(t, k) {
        if (!Array.isArray(t)) mark(t, k);
        return Reflect.has(t, k);
      },
      ownKeys(t) {
        // Iterated as a map (labels, resources.requests): every key is data.
        if (!Array.isArray(t)) seen.set(t, 'all');
        return Reflect.ownKeys(t);
      },
    });
    proxies.set(v, p);
    return p;
  };
  const problems: string[] = [];
  try {
    model.prototype.validate.call(wrap(obj));
  } catch (err) {
    problems.push(`${where}: ${(err as Error).message}`);
  }
  const unknown = (v: unknown, at: string): void => {
    if (Array.isArray(v)) v.forEach((x, i) => unknown(x, `${at}[${i}]`));
    else if (v !== null && typeof v === 'object') {
      const s = seen.get(v);
      for (const [k, x] of Object.entries(v)) {
        if (s !== 'all' && !s?.has(k)) problems.push(`${where}: unknown field ${at}.${k}`);
        else unknown(x, `${at}.${k}`);
      }
    }
  };
  unknown(obj, '');
  return problems;
}

const MODELS: Record<string, ModelClass> = {
  'v1/Pod': Pod,
  'v1/ConfigMap': ConfigMap,
  'v1/ServiceAccount': ServiceAccount,
  'apps/v1/DaemonSet': DaemonSet,
  'monitoring.coreos.com/v1/PodMonitor': PodMonitor,
  'monitoring.coreos.com/v1/PrometheusRule': PrometheusRule,
};

// --- what lives in deploy/ ------------------------------------------------------

interface K8sObject {
  file: string;
  obj: J;
}

const k8sObjects: K8sObject[] = [];
const configFiles = walk(path.join(DEPLOY, 'config')).filter((f) => f.endsWith('.yaml'));
const patchFiles = walk(path.join(DEPLOY, 'kubeadm/patches'));

function loadDeploy(): void {
  for (const file of walk(DEPLOY)) {
    if (!/\.ya?ml$/.test(file)) continue;
    for (const obj of yamlDocs(file)) {
      if (obj && typeof obj === 'object' && 'apiVersion' in obj && 'kind' in obj && !String(obj.apiVersion).startsWith('kubeadm.k8s.io/')) k8sObjects.push({ file, obj });
    }
  }
}
loadDeploy();

const objectsOf = (kind: string) => k8sObjects.filter((o) => o.obj.kind === kind);
const staticPod = (name: string): J => yamlDoc(path.join(DEPLOY, 'static-pod', name));

/** Pod specs that run ballast: static pods, the DaemonSet's template. */
function podSpecs(): { where: string; meta: J; spec: J }[] {
  const out: { where: string; meta: J; spec: J }[] = [];
  for (const { file, obj } of k8sObjects) {
    if (obj.kind === 'Pod') out.push({ where: `${rel(file)} ${obj.metadata.name}`, meta: obj.metadata, spec: obj.spec });
    if (obj.kind === 'DaemonSet') out.push({ where: `${rel(file)} ${obj.metadata.name}`, meta: obj.spec.template.metadata, spec: obj.spec.template.spec });
  }
  return out.filter((p) => p.spec.containers.some(isBallast));
}
const isBallast = (c: J): boolean => typeof c.image === 'string' && c.image.startsWith(IMAGE_PREFIX);

function hostPort(text: string): { host: string; port: number } {
  const m = /^(?:https?:\/\/)?(\[[^\]]+\]|[^:/]+):(\d+)$/.exec(text);
  if (!m) throw new Error(`not host:port: ${text}`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

/** The deploy/config file a ballast container runs, found through its mounts. */
function configOf(spec: J, c: J, where: string): { file: string; text: string } {
  const configPath: string = c.args[2];
  const mount = (c.volumeMounts ?? []).find((m: J) => configPath.startsWith(`${m.mountPath}/`));
  expect(mount, `${where}: no volumeMount holds ${configPath}`).toBeTruthy();
  const vol = spec.volumes.find((v: J) => v.name === mount.name);
  expect(vol, `${where}: volume ${mount.name} is not defined`).toBeTruthy();
  const inside = configPath.slice(mount.mountPath.length + 1);
  if (vol.hostPath) {
    // /etc/kubernetes/ballast/<pattern>/ballast.yaml on the host is deploy/config/<pattern>.yaml.
    const dir: string = vol.hostPath.path;
    expect(path.dirname(dir), `${where}: config directory ${dir} should be under ${HOST_CONFIG_DIR}`).toBe(HOST_CONFIG_DIR);
    const file = path.join(DEPLOY, 'config', `${path.basename(dir)}.yaml`);
    expect(existsSync(file), `${where}: ${dir}/${inside} should be ${rel(file)}, which does not exist`).toBe(true);
    return { file, text: read(file) };
  }
  expect(vol.configMap, `${where}: volume ${vol.name} should be a hostPath or a configMap`).toBeTruthy();
  const item = (vol.configMap.items ?? []).find((i: J) => i.path === inside) ?? { key: inside };
  const cm = objectsOf('ConfigMap').find((o) => o.obj.metadata.name === vol.configMap.name);
  expect(cm, `${where}: ConfigMap ${vol.configMap.name} is not in deploy/`).toBeTruthy();
  const text: string = cm!.obj.data[item.key];
  const file = configFiles.find((f) => read(f) === text);
  expect(file, `${where}: ConfigMap ${vol.configMap.name} key ${item.key} must be a byte-for-byte copy of a deploy/config file`).toBeTruthy();
  return { file: file!, text };
}

// --- a kubeadm-like PKI for check-config ------------------------------------------

interface PkiEntry {
  issuer: 'kubernetes' | 'etcd';
  cn: string;
  usage: CertUsage[];
  dns?: string[];
  ips?: string[];
}
/** kubeadm's file names and identities (kubeadm certs check-expiration lists them). */
const KUBEADM_CERTS: Record<string, PkiEntry> = {
  apiserver: { issuer: 'kubernetes', cn: 'kube-apiserver', usage: ['server'], dns: ['cp-1', 'kubernetes', 'cp.k8s.internal'], ips: ['10.96.0.1', '10.0.0.11', '127.0.0.1'] },
  'apiserver-etcd-client': { issuer: 'etcd', cn: 'kube-apiserver-etcd-client', usage: ['client'] },
  'etcd/server': { issuer: 'etcd', cn: 'cp-1', usage: ['server', 'client'], dns: ['cp-1', 'localhost'], ips: ['10.0.0.11', '127.0.0.1', '::1'] },
  'etcd/peer': { issuer: 'etcd', cn: 'cp-1', usage: ['server', 'client'], dns: ['cp-1', 'localhost'], ips: ['10.0.0.11', '127.0.0.1', '::1'] },
  'etcd/healthcheck-client': { issuer: 'etcd', cn: 'kube-etcd-healthcheck-client', usage: ['client'] },
};

async function makeKubeadmPki(root: string): Promise<Map<string, string>> {
  const cas: Record<string, CertAuthority> = { kubernetes: await createCA({ cn: 'kubernetes' }), etcd: await createCA({ cn: 'etcd-ca' }) };
  const files = new Map<string, string>([
    ['ca.crt', cas.kubernetes!.cert],
    ['etcd/ca.crt', cas.etcd!.cert],
    // Not kubeadm's: the guard's revocation list (README explains making it).
    ['etcd/crl.pem', await createCRL(cas.etcd!, [])],
  ]);
  for (const [name, e] of Object.entries(KUBEADM_CERTS)) {
    const c = await issueCert(cas[e.issuer]!, { cn: e.cn, usage: e.usage, ...(e.dns ? { dns: e.dns } : {}), ...(e.ips ? { ips: e.ips } : {}) });
    files.set(`${name}.crt`, c.cert);
    files.set(`${name}.key`, c.key);
  }
  for (const [name, pem] of files) {
    mkdirSync(path.dirname(path.join(root, name)), { recursive: true });
    writeFileSync(path.join(root, name), pem, { mode: 0o600 });
  }
  return files;
}

const TLS_FILE_KEYS = ['cert', 'key', 'ca', 'clientCA', 'crl'] as const;
function tlsFiles(config: J): string[] {
  return Object.values(config.tls ?? {}).flatMap((p: J) => TLS_FILE_KEYS.map((k) => p[k]).filter((f): f is string => typeof f === 'string'));
}

// --- kubeadm's strategic merge, the part these patches use -------------------------

/** Patch merge keys of the Pod fields kubeadm patches touch (k8s.io/api core/v1 patchMergeKey). */
const MERGE_KEYS: Record<string, string> = { containers: 'name', initContainers: 'name', volumes: 'name', volumeMounts: 'mountPath', env: 'name', ports: 'containerPort' };

function strategicMerge(base: J, patch: J, field?: string): J {
  if (Array.isArray(patch)) {
    const key = field ? MERGE_KEYS[field] : undefined;
    if (!key || !Array.isArray(base)) return structuredClone(patch);
    const out = structuredClone(base);
    for (const item of patch) {
      const i = out.findIndex((b: J) => b[key] === item[key]);
      if (i >= 0) out[i] = strategicMerge(out[i], item);
      else out.push(structuredClone(item));
    }
    return out;
  }
  if (patch !== null && typeof patch === 'object') {
    const out: J = base !== null && typeof base === 'object' && !Array.isArray(base) ? { ...base } : {};
    for (const [k, v] of Object.entries(patch)) {
      if (v === null) delete out[k];
      else out[k] = strategicMerge(out[k], v, k);
    }
    return out;
  }
  return patch;
}

// --- PromQL metric names ---------------------------------------------------------

/** Every metric name ballast's /metrics can carry, from the real registry. */
function exportedMetricNames(): Set<string> {
  const names = new Set<string>(['up']);
  const add = (m: { name: string }) => {
    names.add(m.name);
    if (m instanceof Histogram) for (const s of ['_bucket', '_sum', '_count']) names.add(m.name + s);
  };
  // Collectors read the Ballast only at scrape time; listing needs none.
  const metrics = new Metrics({} as Ballast);
  for (const m of metrics.registry.getMetricsAsArray()) add(m as unknown as { name: string });
  const defaults = new Registry();
  collectDefaultMetrics({ register: defaults });
  for (const m of defaults.getMetricsAsArray()) add(m as unknown as { name: string });
  for (const m of Object.values(METRICS)) expect(names, `METRICS.${m.name} is not registered`).toContain(m.name);
  return names;
}

/** GitHub's anchor for a Markdown heading. */
const slug = (heading: string) =>
  heading
    .trim()
    .toLowerCase()
    .replace(/[^\w\- ]/g, '')
    .replace(/ /g, '-');

async function promtool(args: string[]): Promise<{ code: number; out: string }> {
  try {
    const r = await run('promtool', args, { cwd: REPO, timeout: 15_000 });
    return { code: 0, out: r.stdout + r.stderr };
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { code?: number | string; stdout?: string; stderr?: string };
    if (e.code === 'ENOENT') throw new Error('promtool is not installed: run `bash scripts/setup --test` (Debian package prometheus)');
    return { code: typeof e.code === 'number' ? e.code : 1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

// =====================================================================================

describe('deploy/: Kubernetes manifests', () => {
  it('every YAML document parses and every Kubernetes object validates against its schema, unknown fields included', () => {
    const kinds = new Set(k8sObjects.map((o) => `${o.obj.apiVersion}/${o.obj.kind}`));
    expect([...kinds].sort()).toEqual(Object.keys(MODELS).sort());
    const problems: string[] = [];
    for (const { file, obj } of k8sObjects) {
      const model = MODELS[`${obj.apiVersion}/${obj.kind}`];
      if (!model) problems.push(`${rel(file)}: no schema for ${obj.apiVersion} ${obj.kind}; add it to MODELS`);
      else problems.push(...strictValidate(model, obj, `${rel(file)} ${obj.kind}/${obj.metadata?.name}`));
      expect(obj.metadata?.namespace, `${rel(file)} ${obj.kind}: everything ballast runs belongs in kube-system`).toBe('kube-system');
    }
    expect(problems).toEqual([]);
    // The files this issue ships, so a deleted one is noticed.
    expect(k8sObjects.map((o) => `${rel(o.file)}:${o.obj.kind}`).sort()).toEqual(
      [
        'deploy/daemonset/apiserver-lb.yaml:ConfigMap',
        'deploy/daemonset/apiserver-lb.yaml:DaemonSet',
        'deploy/daemonset/apiserver-lb.yaml:ServiceAccount',
        'deploy/prometheus/podmonitor.yaml:PodMonitor',
        'deploy/prometheus/prometheusrule.yaml:PrometheusRule',
        'deploy/static-pod/ballast-apiserver-lb.yaml:Pod',
        'deploy/static-pod/ballast-vip.yaml:Pod',
        'deploy/static-pod/etcd.yaml:Pod',
        'deploy/static-pod/kube-apiserver.yaml:Pod',
      ].sort(),
    );
  });

  it('the strict validator catches wrong types and unknown fields (so the check above can fail)', () => {
    const pod = structuredClone(staticPod('ballast-apiserver-lb.yaml'));
    expect(strictValidate(Pod, pod, 'lb')).toEqual([]);
    pod.spec.containers[0].securityContext.readOnlyRootFileSystem = true; // typo: FileSystem
    pod.spec.containers[0].resources.limits.memory = 256; // fine: Quantity takes numbers
    pod.spec.hostNetwork = 'yes';
    pod.metadata.labels.extra = 'labels are a map: any key is fine';
    const problems = strictValidate(Pod, pod, 'lb');
    expect(problems.join('\n')).toContain('hostNetwork must be boolean');
    expect(problems).toContain('lb: unknown field .spec.containers[0].securityContext.readOnlyRootFileSystem');
    expect(problems).toHaveLength(2);
  });

  it('every ballast container: image, args, config mount, probes on its admin port, resources, security context', () => {
    const specs = podSpecs();
    // kube-apiserver and etcd (patched), the static load balancer, the VIP, the DaemonSet.
    expect(specs).toHaveLength(5);
    const version = (JSON.parse(read(path.join(REPO, 'package.json'))) as { version: string }).version;
    for (const { where, meta, spec } of specs) {
      expect(spec.hostNetwork, `${where}: hostNetwork`).toBe(true);
      expect(spec.priorityClassName, `${where}: priorityClassName`).toBe('system-node-critical');
      expect(meta.labels['ballast/scrape'], `${where}: the PodMonitor selects ballast/scrape=true`).toBe('true');
      const containers = spec.containers.filter(isBallast);
      expect(containers, `${where}: one ballast container`).toHaveLength(1);
      const c = containers[0];
      const at = `${where} container ${c.name}`;
      expect(c.image, at).toBe(`${IMAGE_PREFIX}${version}`);
      expect(c.args, `${at}: the image's ENTRYPOINT is node dist/cli.js`).toEqual(CONFIG_ARGS);
      expect(c.command, `${at}: command would replace the image's ENTRYPOINT`).toBeUndefined();

      const { file, text } = configOf(spec, c, at);
      const config = YAML.parse(text) as J;
      const admin = hostPort(config.admin.listen);
      expect(['127.0.0.1', '0.0.0.0'], `${at}: probes dial 127.0.0.1; ${rel(file)} admin.listen is ${config.admin.listen}`).toContain(admin.host);
      for (const [probe, p] of [['startupProbe', '/healthz'], ['livenessProbe', '/healthz'], ['readinessProbe', '/readyz']] as const) {
        expect(c[probe]?.httpGet, `${at}: ${probe} must be an httpGet on the admin port`).toMatchObject({ host: '127.0.0.1', port: admin.port, path: p });
      }
      const adminPort = c.ports.find((p: J) => p.name === 'ballast-admin');
      expect(adminPort?.containerPort, `${at}: port ballast-admin must be admin.listen's port (${admin.port}) of ${rel(file)}`).toBe(admin.port);
      const metrics = hostPort(config.admin.metricsListen);
      const metricsPort = c.ports.find((p: J) => p.name === 'ballast-metrics');
      expect(metricsPort?.containerPort, `${at}: port ballast-metrics (scraped by the PodMonitor) must be admin.metricsListen's port (${metrics.port}) of ${rel(file)}`).toBe(metrics.port);
      for (const p of c.ports) expect(p.containerPort, `${at}: no NET_BIND_SERVICE, so no port below 1024`).toBeGreaterThanOrEqual(1024);
      for (const l of config.listeners) expect(hostPort(l.listen).port, `${at}: ${rel(file)} listener ${l.name} needs a port >= 1024 (capabilities are dropped)`).toBeGreaterThanOrEqual(1024);

      expect(c.resources).toEqual({ requests: { cpu: '50m', memory: '128Mi' }, limits: { memory: '256Mi' } });
      const sc = c.securityContext;
      expect(sc, at).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] }, seccompProfile: { type: 'RuntimeDefault' } });
      // vip: adds, refreshes and removes an address (NET_ADMIN) and announces it (NET_RAW); nothing else needs any.
      if (config.vip) expect(sc.capabilities.add, `${at}: vip needs NET_ADMIN and NET_RAW, and only those`).toEqual(['NET_ADMIN', 'NET_RAW']);
      else expect(sc.capabilities.add, `${at}: no capability is needed`).toBeUndefined();
      expect(sc.privileged, at).toBeUndefined();
      // Root only where a private key is read (kubeadm writes them root 0600).
      const needsKeys = Object.values(config.tls ?? {}).some((p: J) => p.key !== undefined);
      if (needsKeys) expect(sc, `${at}: reads kubeadm's root-owned keys`).toMatchObject({ runAsUser: 0, runAsNonRoot: false });
      else expect(sc, `${at}: reads no private key, so runs unprivileged`).toMatchObject({ runAsNonRoot: true, runAsUser: 65532 });

      // Every TLS file the config names is mounted read-only at the host's own path.
      for (const f of tlsFiles(config)) {
        const m = c.volumeMounts.find((vm: J) => f.startsWith(`${vm.mountPath}/`));
        expect(m, `${at}: ${rel(file)} reads ${f}, which no volumeMount provides`).toBeTruthy();
        expect(m.readOnly, `${at}: ${m.mountPath} must be readOnly`).toBe(true);
        const v = spec.volumes.find((x: J) => x.name === m.name);
        expect(v?.hostPath?.path, `${at}: ${m.mountPath} must mount the host's ${m.mountPath} so the config's paths are the host's`).toBe(m.mountPath);
      }
      for (const m of c.volumeMounts) expect(m.readOnly, `${at}: ${m.mountPath} must be readOnly`).toBe(true);
    }
  });

  it('kubeadm patches applied to kubeadm pods give the reference static pods', () => {
    const pairs = [
      ['kube-apiserver+strategic.yaml', 'kube-apiserver.yaml'],
      ['etcd+strategic.yaml', 'etcd.yaml'],
    ] as const;
    expect(patchFiles.map((f) => path.basename(f)).sort()).toEqual(pairs.map((p) => p[0]).sort());
    for (const [patchName, refName] of pairs) {
      // kubeadm's --patches naming: target[suffix][+patchtype].(yaml|json).
      expect(patchName).toMatch(/^(kube-apiserver|kube-controller-manager|kube-scheduler|etcd|kubeletconfiguration|corednsdeployment)[^+.]*(\+(strategic|merge|json))?\.(yaml|json)$/);
      const patch = yamlDoc(path.join(DEPLOY, 'kubeadm/patches', patchName));
      const ref = staticPod(refName);
      expect(Object.keys(patch).sort(), `${patchName}: a strategic patch of a Pod carries only metadata and spec`).toEqual(['metadata', 'spec']);
      expect(patch.spec.containers.map((c: J) => c.name), `${patchName}: adds only the ballast container`).toEqual(['ballast']);

      // The pod kubeadm writes without ballast: the reference minus what the patch adds.
      const base = structuredClone(ref);
      base.spec.containers = base.spec.containers.filter((c: J) => !patch.spec.containers.some((p: J) => p.name === c.name));
      base.spec.volumes = base.spec.volumes.filter((v: J) => !(patch.spec.volumes ?? []).some((p: J) => p.name === v.name));
      for (const k of Object.keys(patch.metadata.labels ?? {})) delete base.metadata.labels[k];
      expect(base.spec.containers.map((c: J) => c.name)).toEqual([refName.replace('.yaml', '')]);
      expect(strictValidate(Pod, base, `kubeadm's ${refName}`)).toEqual([]);

      const patched = strategicMerge(base, patch);
      expect(patched, `${patchName} applied to kubeadm's pod must give deploy/static-pod/${refName}`).toEqual(ref);
      expect(strictValidate(Pod, patched, `patched ${refName}`)).toEqual([]);
      // Volumes the patch's container mounts exist in the patched pod (kubeadm's own, or added).
      for (const m of patch.spec.containers[0].volumeMounts) expect(patched.spec.volumes.map((v: J) => v.name), `${patchName}: mounts ${m.name}`).toContain(m.name);
    }
  });

  it("the DaemonSet's ConfigMap carries deploy/config/apiserver-lb.yaml byte for byte, and the DaemonSet runs everywhere", () => {
    const cm = objectsOf('ConfigMap').find((o) => o.obj.metadata.name === 'ballast-apiserver-lb')!;
    expect(cm.obj.data['ballast.yaml']).toBe(read(path.join(DEPLOY, 'config/apiserver-lb.yaml')));
    const ds = objectsOf('DaemonSet')[0]!.obj;
    expect(ds.spec.template.spec.tolerations, 'tolerate every taint: control-plane nodes too').toEqual([{ operator: 'Exists' }]);
    expect(ds.spec.updateStrategy).toEqual({ type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1, maxSurge: 0 } });
    expect(ds.spec.template.spec.serviceAccountName).toBe(objectsOf('ServiceAccount')[0]!.obj.metadata.name);
    expect(ds.spec.template.spec.automountServiceAccountToken, 'ballast never calls the API').toBe(false);
    for (const [k, v] of Object.entries(ds.spec.selector.matchLabels)) expect(ds.spec.template.metadata.labels[k], `template label ${k}`).toBe(v);
  });

  it('the PodMonitor selects every ballast pod and scrapes a port each ballast container has', () => {
    const pm = objectsOf('PodMonitor')[0]!.obj;
    const [key, value] = Object.entries(pm.spec.selector.matchLabels)[0] as [string, string];
    const ports = pm.spec.podMetricsEndpoints.map((e: J) => e.port);
    for (const { where, meta, spec } of podSpecs()) {
      expect(meta.labels[key], `${where}: label ${key}`).toBe(value);
      expect(pm.spec.namespaceSelector.matchNames).toContain('kube-system');
      const c = spec.containers.find(isBallast);
      for (const p of ports) expect(c.ports.map((x: J) => x.name), `${where}: PodMonitor port ${p}`).toContain(p);
    }
    const job = pm.spec.podMetricsEndpoints[0].relabelings.find((r: J) => r.targetLabel === 'job');
    expect(job?.replacement, 'alerts.yaml selects up{job="ballast"}').toBe('ballast');
  });
});

describe('deploy/: kubeadm and the ballast configs agree', () => {
  const cc = yamlDocs(path.join(DEPLOY, 'kubeadm/cluster-configuration.yaml'));
  const init = cc.find((d) => d.kind === 'InitConfiguration');
  const cluster = cc.find((d) => d.kind === 'ClusterConfiguration');
  const clientCfg = YAML.parse(read(path.join(DEPLOY, 'config/etcd-client-sidecar.yaml'))) as J;
  const guardCfg = YAML.parse(read(path.join(DEPLOY, 'config/etcd-guard-sidecar.yaml'))) as J;
  const lbCfg = YAML.parse(read(path.join(DEPLOY, 'config/apiserver-lb.yaml'))) as J;
  const flags = (pod: J, container: string): Map<string, string> =>
    new Map(
      pod.spec.containers
        .find((c: J) => c.name === container)
        .command.slice(1)
        .map((f: string) => {
          const i = f.indexOf('=');
          return [f.slice(2, i), f.slice(i + 1)] as [string, string];
        }),
    );
  const extraArg = (args: J, name: string): string | undefined => (args ?? []).find((a: J) => a.name === name)?.value;
  const apiserver = flags(staticPod('kube-apiserver.yaml'), 'kube-apiserver');
  const etcd = flags(staticPod('etcd.yaml'), 'etcd');

  it('cluster-configuration.yaml is kubeadm v1beta4 with the patches directory and the pattern settings', () => {
    expect(cc.map((d) => `${d.apiVersion} ${d.kind}`)).toEqual(['kubeadm.k8s.io/v1beta4 InitConfiguration', 'kubeadm.k8s.io/v1beta4 ClusterConfiguration']);
    expect(init.patches).toEqual({ directory: PATCHES_DIR });
    // v1beta4 extraArgs are lists of {name, value}; a v1beta3 map would be rejected.
    for (const args of [cluster.apiServer.extraArgs, cluster.etcd.local.extraArgs]) {
      expect(Array.isArray(args)).toBe(true);
      for (const a of args) expect(Object.keys(a).sort()).toEqual(['name', 'value']);
    }
    expect(init.localAPIEndpoint.advertiseAddress).toBe(apiserver.get('advertise-address'));
  });

  it('pattern 1: kube-apiserver dials the client sidecar, which checks its identity and reuses it towards etcd', () => {
    const listener = clientCfg.listeners[0];
    const inProfile = clientCfg.tls[listener.tls];
    const outProfile = clientCfg.tls[clientCfg.clusters.find((c: J) => c.name === listener.cluster).tls];
    expect(apiserver.get('etcd-servers')).toBe(`https://${listener.listen}`);
    expect(extraArg(cluster.apiServer.extraArgs, 'etcd-servers')).toBe(apiserver.get('etcd-servers'));
    // The apiserver verifies ballast with --etcd-cafile; ballast verifies the apiserver with clientCA.
    expect(inProfile.clientCA).toBe(apiserver.get('etcd-cafile'));
    expect(inProfile.allow).toContainEqual({ cn: KUBEADM_CERTS['apiserver-etcd-client']!.cn });
    expect(apiserver.get('etcd-certfile')).toBe(`${PKI}/apiserver-etcd-client.crt`);
    expect(outProfile.cert).toBe(apiserver.get('etcd-certfile'));
    expect(outProfile.key).toBe(apiserver.get('etcd-keyfile'));
    expect(outProfile.ca).toBe(apiserver.get('etcd-cafile'));
    // The server cert must carry the IP the apiserver dials (kubeadm's etcd server cert has 127.0.0.1).
    expect(inProfile.cert).toBe(`${PKI}/etcd/server.crt`);
    expect(KUBEADM_CERTS['etcd/server']!.ips).toContain(hostPort(listener.listen).host);
    // Seeds are the members' advertised client URLs.
    for (const e of clientCfg.clusters[0].endpoints) expect(e).toMatch(/^https:\/\/10\.0\.0\.1[1-3]:2379$/);
    expect(clientCfg.clusters[0].endpoints).toContain(etcd.get('advertise-client-urls'));
  });

  it('pattern 2: etcd leaves the node address to the guard, which lets in kubeadm identities only', () => {
    const listener = guardCfg.listeners[0];
    const guard = guardCfg.tls[listener.tls];
    const local = guardCfg.clusters.find((c: J) => c.name === listener.cluster);
    const etcdListens = etcd.get('listen-client-urls')!.split(',');
    expect(extraArg(cluster.etcd.local.extraArgs, 'listen-client-urls')).toBe(etcd.get('listen-client-urls'));
    expect(etcdListens).toEqual(local.endpoints);
    expect(etcdListens.map((u) => hostPort(u).host)).not.toContain(hostPort(listener.listen).host);
    expect(etcd.get('advertise-client-urls')).toBe(`https://${listener.listen}`);
    // Clients see the same server certificate and CA as when they talked to etcd directly.
    expect(guard.cert).toBe(etcd.get('cert-file'));
    expect(guard.key).toBe(etcd.get('key-file'));
    expect(guard.clientCA).toBe(etcd.get('trusted-ca-file'));
    expect(guardCfg.tls[local.tls].ca).toBe(etcd.get('trusted-ca-file'));
    expect(guard.allow.map((a: J) => a.cn).sort()).toEqual([KUBEADM_CERTS['apiserver-etcd-client']!.cn, KUBEADM_CERTS['etcd/healthcheck-client']!.cn].sort());
  });

  it('pattern 3: controlPlaneEndpoint is the node-local load balancer, in front of the real apiservers', () => {
    const listener = hostPort(lbCfg.listeners[0].listen);
    const cpe = hostPort(cluster.controlPlaneEndpoint);
    expect(listener.host).toBe('127.0.0.1');
    expect(cpe.port).toBe(listener.port);
    expect(cpe.host, 'a name that /etc/hosts maps to 127.0.0.1 on every node').not.toMatch(/^[\d.]+$|cluster\.local$/);
    expect(cluster.apiServer.certSANs, 'kubeadm leaves 127.0.0.1 out of the apiserver cert').toContain('127.0.0.1');
    const apiserverAddr = `${apiserver.get('advertise-address')}:${apiserver.get('secure-port')}`;
    expect(lbCfg.clusters[0].endpoints).toContain(apiserverAddr);
    expect(lbCfg.clusters[0].health).toMatchObject({ check: 'https', path: '/readyz' });
  });

  it('on one control-plane node, ballast, kube-apiserver, etcd and kubelet do not fight over a port', () => {
    const nodeIp = apiserver.get('advertise-address')!;
    const binds: { who: string; host: string; port: number }[] = [
      { who: 'kube-apiserver', host: apiserver.get('bind-address') ?? '0.0.0.0', port: Number(apiserver.get('secure-port')) },
      { who: 'kubelet', host: '0.0.0.0', port: 10250 },
      { who: 'kubelet healthz', host: '127.0.0.1', port: 10248 },
      { who: 'kube-controller-manager', host: '127.0.0.1', port: 10257 },
      { who: 'kube-scheduler', host: '127.0.0.1', port: 10259 },
      { who: 'kube-proxy metrics', host: '127.0.0.1', port: 10249 },
      { who: 'kube-proxy healthz', host: '0.0.0.0', port: 10256 },
    ];
    for (const f of ['listen-client-urls', 'listen-peer-urls', 'listen-metrics-urls']) for (const u of etcd.get(f)!.split(',')) binds.push({ who: `etcd ${f}`, ...hostPort(u) });
    for (const [name, cfg] of [['etcd-client-sidecar', clientCfg], ['etcd-guard-sidecar', guardCfg], ['apiserver-lb', lbCfg]] as const) {
      binds.push({ who: `ballast ${name} admin`, ...hostPort(cfg.admin.listen) });
      for (const l of cfg.listeners) binds.push({ who: `ballast ${name} ${l.name}`, ...hostPort(l.listen) });
    }
    expect(binds.find((b) => b.who === 'ballast etcd-guard-sidecar etcd-guard')?.host, 'the guard config is for cp-1').toBe(nodeIp);
    const any = (h: string) => h === '0.0.0.0' || h === '::';
    const clashes: string[] = [];
    binds.forEach((a, i) =>
      binds.slice(i + 1).forEach((b) => {
        if (a.port === b.port && (a.host === b.host || any(a.host) || any(b.host))) clashes.push(`${a.who} ${a.host}:${a.port} vs ${b.who} ${b.host}:${b.port}`);
      }),
    );
    expect(clashes).toEqual([]);
  });

  it('the README installs each config where the manifests look for it', () => {
    const readme = read(path.join(DEPLOY, 'README.md'));
    for (const f of configFiles) {
      const pattern = path.basename(f, '.yaml');
      expect(readme, `README must install ${rel(f)}`).toContain(`deploy/config/${pattern}.yaml ${HOST_CONFIG_DIR}/${pattern}/ballast.yaml`);
    }
    expect(readme).toContain(PATCHES_DIR);
    // Links inside the README land on a heading (a renamed section breaks them silently).
    const anchors = new Set([...readme.matchAll(/^#{1,6} (.+)$/gm)].map((m) => slug(m[1]!)));
    const links = [...readme.matchAll(/\]\(#([^)]+)\)/g)].map((m) => m[1]!);
    expect(links.length).toBeGreaterThan(10);
    expect(links.filter((l) => !anchors.has(l))).toEqual([]);
  });
});

interface CliResult {
  code: number;
  out: string;
}
function checkConfig(file: string): Promise<CliResult> {
  return run(process.execPath, [CLI, 'check-config', '--config', file], { cwd: REPO, timeout: 15_000 }).then(
    (r) => ({ code: 0, out: r.stdout + r.stderr }),
    (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
  );
}

describe('deploy/config: every ballast config passes check-config', () => {
  let dir: string;
  let pki: Map<string, string>;
  // The CLI runs concurrently: each start costs a Node boot.
  const results = new Map<string, Promise<CliResult>>();
  beforeAll(async () => {
    expect(existsSync(CLI), `${rel(CLI)} is missing: run npm run build`).toBe(true);
    dir = mkdtempSync(path.join(os.tmpdir(), 'ballast-deploy-'));
    pki = await makeKubeadmPki(path.join(dir, 'pki'));
    for (const file of configFiles) {
      const copy = path.join(dir, path.basename(file));
      writeFileSync(copy, read(file).replaceAll(`${PKI}/`, `${dir}/pki/`));
      results.set(path.basename(file), checkConfig(copy));
    }
    const missing = path.join(dir, 'missing.yaml');
    writeFileSync(missing, read(path.join(DEPLOY, 'config/etcd-guard-sidecar.yaml')).replaceAll(`${PKI}/`, `${dir}/nowhere/`));
    results.set('missing', checkConfig(missing));
    await Promise.all(results.values());
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  // The ConfigMap's copy is covered too: it must equal one of these files byte for byte.
  it.each(configFiles.map((f) => [path.basename(f), f]))('%s, its TLS paths moved onto a kubeadm-like PKI', async (name, file) => {
    const text = read(file);
    const config = YAML.parse(text) as J;
    for (const f of tlsFiles(config)) {
      expect(f.startsWith(`${PKI}/`), `${name}: ${f} is outside kubeadm's ${PKI}`).toBe(true);
      expect([...pki.keys()], `${name}: ${f} is not a file kubeadm (or the README) creates`).toContain(f.slice(PKI.length + 1));
    }
    expect(read(path.join(dir, name))).not.toContain('/etc/kubernetes');
    const r = await results.get(name)!;
    expect(r.out, `check-config ${name}`).toContain(': valid:');
    expect(r.code).toBe(0);
  });

  it('check-config really reads the PKI: a config naming a missing certificate is refused', async () => {
    const r = await results.get('missing')!;
    expect(r.code).toBe(2);
    expect(r.out).toContain('nowhere');
  });

  it("kubeadm's identities: the certificates the configs name chain to the CAs they are checked against", () => {
    const cert = (f: string) => new X509Certificate(pki.get(f.slice(PKI.length + 1))!);
    for (const file of configFiles) {
      const config = YAML.parse(read(file)) as J;
      for (const [name, p] of Object.entries(config.tls ?? {}) as [string, J][]) {
        // A profile's own certificate is verified by peers with the same CA it verifies them with.
        const ca = p.clientCA ?? p.ca;
        if (p.cert && ca) expect(cert(p.cert).checkIssued(cert(ca)), `${rel(file)} tls.${name}: ${p.cert} is not issued by ${ca}`).toBe(true);
        if (p.cert && p.key) expect(cert(p.cert).checkPrivateKey(createPrivateKey(pki.get(p.key.slice(PKI.length + 1))!)), `${rel(file)} tls.${name}: key does not match`).toBe(true);
      }
    }
  });
});

describe('deploy/prometheus and deploy/grafana', () => {
  const alertsFile = path.join(DEPLOY, 'prometheus/alerts.yaml');
  const alerts = yamlDoc(alertsFile);
  const rules: J[] = alerts.groups.flatMap((g: J) => g.rules);
  const dashboard = JSON.parse(read(path.join(DEPLOY, 'grafana/ballast-dashboard.json'))) as J;
  const panels: J[] = dashboard.panels.flatMap((p: J) => [p, ...(p.panels ?? [])]).filter((p: J) => p.type !== 'row');

  // promtool runs concurrently: each start costs a second or two on a busy machine.
  const promtoolRuns = new Map<string, Promise<{ code: number; out: string }>>();
  let tmp: string;
  beforeAll(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'ballast-alerts-'));
    // The same tests against a copy whose BallastNoHealthyEndpoint can never fire.
    writeFileSync(path.join(tmp, 'alerts.yaml'), read(alertsFile).replace('ballast_cluster_healthy_endpoints == 0', 'ballast_cluster_healthy_endpoints < 0'));
    writeFileSync(path.join(tmp, 'alerts.test.yaml'), read(path.join(DEPLOY, 'prometheus/alerts.test.yaml')));
    promtoolRuns.set('check', promtool(['check', 'rules', 'deploy/prometheus/alerts.yaml']));
    promtoolRuns.set('test', promtool(['test', 'rules', 'deploy/prometheus/alerts.test.yaml']));
    promtoolRuns.set('broken', promtool(['test', 'rules', path.join(tmp, 'alerts.test.yaml')]));
    await Promise.allSettled(promtoolRuns.values());
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('promtool check rules accepts alerts.yaml', async () => {
    const r = await promtoolRuns.get('check')!;
    expect(r.out).toContain('SUCCESS');
    expect(r.code).toBe(0);
  });

  it('promtool test rules: alerts fire on their series and stay quiet on look-alikes', async () => {
    const tests = yamlDoc(path.join(DEPLOY, 'prometheus/alerts.test.yaml'));
    const tested = new Set(tests.tests.flatMap((t: J) => t.alert_rule_test.filter((a: J) => a.exp_alerts.length > 0).map((a: J) => a.alertname)));
    for (const a of ['BallastNoHealthyEndpoint', 'BallastCertificateExpiringSoon']) expect([...tested]).toContain(a);
    const r = await promtoolRuns.get('test')!;
    expect(r.out).toContain('SUCCESS');
    expect(r.code).toBe(0);
  });

  it('promtool test rules fails when an alert stops firing (so the test above can fail)', async () => {
    const r = await promtoolRuns.get('broken')!;
    expect(r.code).not.toBe(0);
    expect(r.out).toContain('BallastNoHealthyEndpoint');
  });

  it('prometheusrule.yaml carries exactly the groups of alerts.yaml', () => {
    const pr = objectsOf('PrometheusRule')[0]!.obj;
    expect(pr.spec.groups).toEqual(alerts.groups);
  });

  it('the alerts of the issue exist, each with a severity and a runbook section in deploy/README.md', () => {
    const names = rules.map((r) => r.alert);
    for (const a of ['BallastEndpointDown', 'BallastNoHealthyEndpoint', 'BallastPanicMode', 'BallastCertificateExpiringSoon', 'BallastCertificateExpired', 'BallastConfigReloadFailed', 'BallastTlsRotationFailed', 'BallastNoRecentBackup', 'BallastAffinityBehindMoves', 'BallastDown']) {
      expect(names).toContain(a);
    }
    const anchors = new Set([...read(path.join(DEPLOY, 'README.md')).matchAll(/^#{1,6} (.+)$/gm)].map((m) => slug(m[1]!)));
    for (const r of rules) {
      expect(['critical', 'warning'], `${r.alert} severity`).toContain(r.labels?.severity);
      expect(Object.keys(r.annotations).sort(), r.alert).toEqual(['description', 'runbook_url', 'summary']);
      const m = /^https:\/\/github\.com\/ballast-proxy\/ballast\/blob\/main\/deploy\/README\.md#(.+)$/.exec(r.annotations.runbook_url);
      expect(m?.[1], `${r.alert}: runbook_url`).toBe(r.alert.toLowerCase());
      expect(anchors.has(m![1]!), `${r.alert}: deploy/README.md needs a heading "${r.alert}"`).toBe(true);
    }
    const backup = rules.find((r) => r.alert === 'BallastNoRecentBackup')!;
    expect(backup.expr).toContain('2 * 3600');
    expect(backup.annotations.description).toContain('2 x');
  });

  it('every metric the alerts and the dashboard query is one ballast exports', () => {
    const known = exportedMetricNames();
    const exprs = [...rules.map((r) => ({ where: `alert ${r.alert}`, expr: r.expr as string })), ...panels.flatMap((p) => p.targets.map((t: J) => ({ where: `panel "${p.title}"`, expr: t.expr as string })))];
    const unknown = exprs.flatMap(({ where, expr }) => metricNames(expr).filter((n) => !known.has(n)).map((n) => `${where}: ${n}`));
    expect(unknown).toEqual([]);
    expect(exprs.flatMap((e) => metricNames(e.expr)).length).toBeGreaterThan(40);
  });

  it('metricNames finds metric names and nothing else (so the check above can fail)', () => {
    expect(metricNames('histogram_quantile(0.99, sum by (cluster, le) (rate(ballast_upstream_connect_duration_seconds_bucket{instance=~"$instance", x="a{b}"}[$__rate_interval])))')).toEqual(['ballast_upstream_connect_duration_seconds_bucket']);
    expect(metricNames('max by (cluster) (a_total) - on (cluster) group_right () max by (cluster, endpoint) (b) / 86400 > 14 * 1e3')).toEqual(['a_total', 'b']);
    expect(metricNames('up{job="ballast"} == 0 or absent(up{job="ballast"})')).toEqual(['up']);
    const known = exportedMetricNames();
    expect(known.has('ballast_upstream_healthy')).toBe(true);
    expect(known.has('ballast_upstream_connect_duration_seconds_bucket')).toBe(true);
    expect(known.has('process_resident_memory_bytes')).toBe(true);
    expect(known.has('ballast_upstream_health')).toBe(false);
  });

  it('the Grafana dashboard: schema 39, a datasource variable every query uses, the panels an operator needs', () => {
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(39);
    const dsVar = dashboard.templating.list.find((v: J) => v.type === 'datasource');
    expect(dsVar).toMatchObject({ name: 'datasource', query: 'prometheus' });
    const ids = dashboard.panels.map((p: J) => p.id);
    expect(new Set(ids).size, 'panel ids are unique').toBe(ids.length);
    for (const p of panels) {
      expect(p.datasource, `panel "${p.title}"`).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(p.targets.length, `panel "${p.title}" has queries`).toBeGreaterThan(0);
      for (const t of p.targets) expect(t.datasource?.uid, `panel "${p.title}" ${t.refId}`).toBe('${datasource}');
      expect(p.gridPos.x + p.gridPos.w, `panel "${p.title}" fits 24 columns`).toBeLessThanOrEqual(24);
    }
    const all = panels.flatMap((p) => p.targets.map((t: J) => t.expr as string)).join('\n');
    for (const m of ['ballast_upstream_healthy', 'ballast_listener_active_connections', 'ballast_upstream_active_connections', 'ballast_listener_connections_total', 'ballast_upstream_bytes_total', 'ballast_upstream_health_checks_total', 'ballast_affinity_moves_total', 'ballast_tls_handshake_failures_total', 'ballast_tls_certificate_expiry_seconds', 'ballast_backup_last_success_timestamp_seconds', 'process_resident_memory_bytes', 'nodejs_eventloop_lag']) {
      expect(all, `the dashboard should chart ${m}`).toContain(m);
    }
    expect(all).toContain('histogram_quantile(0.5,');
    expect(all).toContain('histogram_quantile(0.99,');
    expect(all).toMatch(/ballast_tls_certificate_expiry_seconds[^\n]*\/ 86400/);
  });
});
