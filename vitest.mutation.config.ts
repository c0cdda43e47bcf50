import { defineConfig } from 'vitest/config';

// The unit tests only, for `npm run mutation` (StrykerJS): the pure modules
// it mutates are covered there, and integration tests (real etcd, sockets)
// are far too slow to run once per mutant.
export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
