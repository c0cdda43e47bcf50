// Temporary directories and files for tests.
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

/** A fresh directory under os.tmpdir() (or `parent`), e.g. /tmp/ballast-test-XXXXXX. */
export async function makeTempDir(prefix = 'ballast-test-', parent = os.tmpdir()): Promise<string> {
  return fsp.mkdtemp(path.join(parent, prefix));
}

/** rm -rf; a missing directory is fine. */
export async function removeDir(dir: string): Promise<void> {
  await fsp.rm(dir, { recursive: true, force: true, maxRetries: 3, retryDelay: 50 });
}

/** Runs `fn` with a fresh temp directory and removes it afterwards. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>, prefix?: string): Promise<T> {
  const dir = await makeTempDir(prefix);
  try {
    return await fn(dir);
  } finally {
    await removeDir(dir);
  }
}

/**
 * Writes `files` (name -> contents) into `dir` with mode 0600 and returns
 * name -> absolute path, e.g. to hand PEM strings to etcd as files.
 */
export async function writeFiles<K extends string>(
  dir: string,
  files: Record<K, string | Uint8Array>,
  mode = 0o600,
): Promise<Record<K, string>> {
  const out = {} as Record<K, string>;
  for (const name of Object.keys(files) as K[]) {
    const p = path.join(dir, name);
    await fsp.writeFile(p, files[name], { mode });
    out[name] = p;
  }
  return out;
}
