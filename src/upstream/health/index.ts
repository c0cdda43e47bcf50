import type { Logger } from 'pino';
import type { Clock } from '../../clock.js';
import type { Cluster } from '../cluster.js';
import { EtcdCheck } from './etcd-check.js';
import type { HealthCheck } from './health-check.js';
import { HealthChecker } from './health-checker.js';
import { HttpCheck, type CheckTls } from './http-check.js';
import { TcpCheck } from './tcp-check.js';

export type { CheckTls } from './http-check.js';
export { HealthChecker } from './health-checker.js';

/** The checker for a cluster's `health.check`, or undefined for `none`. */
export function createHealthChecker(cluster: Cluster, tls: () => CheckTls | undefined, clock: Clock, log: Logger): HealthChecker | undefined {
  const health = () => cluster.config.health;
  let check: HealthCheck;
  switch (cluster.config.health.check) {
    case 'none':
      return undefined;
    case 'tcp':
      check = new TcpCheck();
      break;
    case 'http':
      check = new HttpCheck(false, health, tls);
      break;
    case 'https':
      check = new HttpCheck(true, health, tls);
      break;
    case 'etcd':
      check = new EtcdCheck(cluster, health, tls, clock);
      break;
  }
  return new HealthChecker(cluster, check, clock, log);
}
