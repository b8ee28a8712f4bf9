import { aliveKey } from '../../src/control/keys';
import type { Agent } from '../../src/testbed/agents';
import type { MeshBed } from '../../src/testbed/mesh';

/** etcdctl against the bed's etcd, from the router namespace, with short deadlines. */
export function bedEtcdctl(bed: MeshBed, args: string[]) {
  return bed.topo.tryExec(bed.topo.routerNs, ['etcdctl', `--endpoints=${bed.etcd.endpoint}`, '--dial-timeout=1s', '--command-timeout=2s', ...args]);
}

/** The agent reads etcd again and its liveness key is there, on a lease. */
export async function backWithEtcd(bed: MeshBed, agent: Agent): Promise<boolean> {
  const doc = await agent.status();
  if (!doc.etcd.connected) return false;
  const r = await bedEtcdctl(bed, ['get', aliveKey(bed.network, agent.name), '-w', 'json']);
  if (r.code !== 0) return false;
  const kvs = (JSON.parse(r.stdout) as { kvs?: { lease?: number }[] }).kvs ?? [];
  return kvs.length === 1 && (kvs[0]!.lease ?? 0) !== 0;
}
