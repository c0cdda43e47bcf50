import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { METRICS } from '../../src/admin/metrics.js';
import { tlsProfileSchema, listenerSchema, clusterSchema, backupSchema, configSchema, vipSchema } from '../../src/config/schema.js';

// The README's metric table and configuration reference come from the same
// declarations as the code; this keeps them from drifting apart.

const README = readFileSync(path.join(path.dirname(fileURLToPath(import.meta.url)), '../../README.md'), 'utf8');

function keysOf(schema: unknown): string[] {
  const shape = (schema as { shape?: Record<string, unknown> }).shape;
  return shape ? Object.keys(shape) : [];
}

describe('README', () => {
  it('lists every metric with its labels', () => {
    for (const m of Object.values(METRICS)) {
      const row = README.split('\n').find((l) => l.startsWith(`| \`${m.name}\` |`));
      expect(row, `${m.name} missing from the README's metric table`).toBeDefined();
      for (const label of m.labels) expect(row, `${m.name}: label ${label}`).toContain(`\`${label}\``);
    }
  });

  it('documents every config key', () => {
    const sections: [string, unknown][] = [
      ['', configSchema],
      ['tls.<name>.', tlsProfileSchema],
      ['listeners[].', listenerSchema],
      ['clusters[].', clusterSchema],
      ['backup.', backupSchema],
      ['vip.', vipSchema],
    ];
    const reference = README.slice(README.indexOf('## Configuration reference'));
    for (const [prefix, schema] of sections) {
      for (const key of keysOf(schema)) {
        if (prefix === '' && ['tls', 'listeners', 'clusters', 'backup', 'vip'].includes(key)) continue;
        expect(reference, `${prefix}${key}`).toMatch(new RegExp(`\`${prefix.replace(/[[\]<>.]/g, '\\$&')}${key}[\`.,]|\\.${key}\``));
      }
    }
  });
});
