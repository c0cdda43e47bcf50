import { defineConfig } from 'vitest/config';

// Integration tests start real etcd clusters and real sockets: they run in
// forked processes (signals, child processes) and a few files at a time so
// the 2-core CI machine is not starved into false timeouts.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: ['default', 'json'],
    outputFile: { json: '.test-results/vitest.json' },
  },
});
