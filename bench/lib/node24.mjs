import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// Node 24 LTS, the Node the image ships, for the ballast under test:
// scripts/node24 fetches it into a cache dir on first use (as .ci/run does),
// so no harness depends on one machine's paths. Falls back to the Node
// running the harness, with a warning, when it cannot be fetched.
let cached;
export function node24() {
  if (cached !== undefined) return cached;
  const script = fileURLToPath(new URL('../../scripts/node24', import.meta.url));
  try {
    cached = execFileSync('bash', [script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  } catch {
    process.stderr.write(`bench: could not fetch Node 24; ballast runs on ${process.version}\n`);
    cached = process.execPath;
  }
  return cached;
}
