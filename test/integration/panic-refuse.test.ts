import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startInProcess, type InProcess } from '../support/ballast.js';
import { freePorts } from '../support/ports.js';
import { closed, connect, eventually, readUntil, startEchoServer, type TestServer } from '../support/servers.js';

// `panic: refuse`: with every endpoint down, a client is closed at once
// instead of being sent to a dead endpoint, and the refusal is counted as
// ballast_listener_connections_total{result="no_endpoint"}: the only sign an
// operator gets that clients are being turned away. (issue #21: no_endpoint
// refusals counted as nothing went unnoticed.)

let backends: TestServer[];
let proxy: InProcess;
let port: number;
let admin: number;

async function noEndpointCount(): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('ballast_listener_connections_total{') && l.includes('listener="front"') && l.includes('result="no_endpoint"'));
  if (line === undefined) throw new Error(`no ballast_listener_connections_total{listener="front",result="no_endpoint"} in /metrics:\n${text.slice(0, 2000)}`);
  return Number(line.split(' ').at(-1));
}

async function status(): Promise<{ healthy: number; panic: boolean; endpoints: { state: string }[] }> {
  const body = (await (await fetch(`http://127.0.0.1:${admin}/status`)).json()) as { clusters: { name: string; healthy: number; panic: boolean; endpoints: { state: string }[] }[] };
  return body.clusters.find((c) => c.name === 'backends')!;
}

beforeAll(async () => {
  backends = [await startEchoServer(), await startEchoServer()];
  [port, admin] = (await freePorts(2)) as [number, number];
  proxy = await startInProcess(
    `
admin: { listen: 127.0.0.1:${admin} }
listeners:
  - { name: front, listen: 127.0.0.1:${port}, cluster: backends }
clusters:
  - name: backends
    endpoints: [${backends.map((b) => `127.0.0.1:${b.port}`).join(', ')}]
    panic: refuse
    health: { check: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }
`,
    { admin: true },
  );
  await eventually(async () => (await status()).healthy === 2, 'both backends up');
});

afterAll(async () => {
  await proxy?.stop();
  for (const b of backends ?? []) await b.close();
});

describe('panic: refuse with every endpoint down', () => {
  it('proxies while an endpoint is up (the control)', async () => {
    const s = await connect(port);
    s.write('hello');
    expect((await readUntil(s, (b) => b.toString() === 'hello')).toString()).toBe('hello');
    s.destroy();
  });

  it('closes the client without routing it, and counts it as no_endpoint', async () => {
    for (const b of backends) await b.close();
    await eventually(async () => (await status()).endpoints.every((e) => e.state === 'down'), 'both backends down');
    const st = await status();
    expect(st.healthy).toBe(0);
    expect(st.panic).toBe(false);
    const before = await noEndpointCount();
    for (let i = 0; i < 3; i++) {
      const s = await connect(port);
      s.on('error', () => undefined);
      s.write('anyone?');
      let got = '';
      s.on('data', (d: Buffer) => (got += d.toString()));
      expect(['end', 'close', 'error']).toContain(await closed(s, 5_000));
      expect(got).toBe('');
    }
    await eventually(async () => (await noEndpointCount()) === before + 3, 'three no_endpoint refusals counted');
    expect(proxy.ballast.listeners.get('front')!.results.get('no_endpoint')).toBe(before + 3);
  });
});
