import type { Clock } from '../../clock.js';
import type { ClusterConfig } from '../../config/load.js';
import type { Balancer } from './balancer.js';
import { LeastConnectionsBalancer } from './least-connections.js';
import { RandomTwoBalancer } from './random-two.js';
import { RendezvousBalancer } from './rendezvous.js';
import { RoundRobinBalancer } from './round-robin.js';

export type { Balancer, PickContext } from './balancer.js';
export { RendezvousBalancer } from './rendezvous.js';

export function createBalancer(config: ClusterConfig, clock: Clock): Balancer {
  switch (config.balance) {
    case 'round-robin':
      return new RoundRobinBalancer();
    case 'least-connections':
      return new LeastConnectionsBalancer();
    case 'random-two':
      return new RandomTwoBalancer();
    case 'affinity':
      return new RendezvousBalancer({ ...config.affinity, clock });
  }
}
