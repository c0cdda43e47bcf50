import { expect } from 'vitest';
import { ConfigError, parseConfig } from '../../src/config/load.js';

/** The problems a refused config lists (throws if the config was accepted). */
export function problems(yaml: string): string[] {
  try {
    parseConfig(yaml, 'test.yaml');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('config was accepted');
}
