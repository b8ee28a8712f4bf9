import type { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEtcd } from '../../src/control/etcd';
import { aliveKey } from '../../src/control/keys';
import { createNetwork } from '../../src/control/networks';
import { HostRecord, NetworkSpec } from '../../src/control/records';
import { PeerSnapshot, Registry } from '../../src/control/registry';
import { createRootLogger, Logger } from '../../src/log';
import { EtcdHandle, startEtcd, waitFor } from '../helpers/etcd';

/** etcd goes away and comes back (same data dir and port): the registry must carry on by itself. */

const key = (n: number) => Buffer.alloc(32, n).toString('base64');

function record(name: string, overlayIp: string): HostRecord {
  return {
    version: 1,
    name,
    network: 'demo',
    overlayIp,
    publicKey: key(name.charCodeAt(0)),
    endpoints: ['198.18.1.2:51820'],
    hostCidrs: [],
    listenPort: 51820,
    epoch: 0,
    updated: new Date().toISOString(),
    session: '0123456789abcdef',
  };
}

function memoryLogger(): { log: Logger; msgs: string[] } {
  const msgs: string[] = [];
  return { log: createRootLogger('debug', { write: (s: string) => void msgs.push((JSON.parse(s) as { msg: string }).msg) }), msgs };
}

let etcd: EtcdHandle;
let admin: Etcd3;
let spec: NetworkSpec;
const clients: Etcd3[] = [];
const registries: Registry[] = [];

function host(self: string, aliveTtlSec?: number) {
  const client = createEtcd({ endpoints: [etcd.endpoint], dialTimeoutMs: 1000 });
  clients.push(client);
  const { log, msgs } = memoryLogger();
  const reg = new Registry({ client, network: spec, self, log, aliveTtlSec });
  registries.push(reg);
  return { reg, msgs };
}

async function aliveLease(name: string): Promise<string | null> {
  const res = await admin.get(aliveKey('demo', name)).exec();
  return res.kvs[0]?.lease ?? null;
}

beforeAll(async () => {
  etcd = await startEtcd();
  admin = createEtcd({ endpoints: [etcd.endpoint], dialTimeoutMs: 1000 });
  spec = await createNetwork(admin, { name: 'demo', cidr: '100.64.0.0/24' });
});

afterAll(async () => {
  for (const r of registries) await r.close();
  for (const c of clients) c.close();
  admin?.close();
  await etcd?.stop();
});

describe('registry across an etcd restart', () => {
  it('keeps the last peers while etcd is down, then resumes and sees later changes', async () => {
    const me = host('me');
    const calls: PeerSnapshot[] = [];
    await me.reg.watch((p) => void calls.push(p));
    await me.reg.publish(record('me', '100.64.0.1'));
    await me.reg.startAlive();

    const a = host('a');
    await a.reg.publish(record('a', '100.64.0.2'));
    await a.reg.startAlive();
    await waitFor(() => calls.at(-1)?.has('a'), 2000, 'peer a');
    const callsBefore = calls.length;
    const meLease = await aliveLease('me');

    await etcd.stopProcess();
    await waitFor(() => !me.reg.connected(), 5000, 'the registry to notice the outage');
    expect(me.reg.peers().has('a')).toBe(true);
    expect(me.msgs).toContain('etcd watch disconnected; keeping the last peer set');

    await etcd.startProcess();
    await waitFor(() => me.reg.connected(), 10_000, 'the registry to reconnect');
    expect(me.msgs).toContain('etcd watch reconnected; resuming from the last applied revision');
    // Nothing changed while etcd was away, so nothing was delivered: in particular no empty set.
    expect(calls.length).toBe(callsBefore);

    const b = host('b');
    await waitFor(() => b.reg.publish(record('b', '100.64.0.3')).then(() => true, () => false), 5000, 'b to publish');
    await b.reg.startAlive();
    await waitFor(() => calls.at(-1)?.has('b'), 3000, 'peer b after the restart');
    expect([...calls.at(-1)!.keys()]).toEqual(['a', 'b']);

    // The watch still works after the restart: a's liveness going is seen (a stays a member:
    // liveness is a hint, roster.ts), and a bye takes it out.
    await a.reg.stopAlive();
    await waitFor(() => me.reg.etcdView('a')?.alive === false, 3000, "a's alive key to go after the restart");
    expect(me.reg.bye('a')).toBe(true);
    expect(calls.at(-1)?.has('a')).toBe(false);
    for (const snap of calls.slice(callsBefore - 1)) expect(snap.size).toBeGreaterThan(0);

    // Our own liveness rode through the short outage on the same lease.
    expect(await aliveLease('me')).toBe(meLease);
  });

  it('re-grants liveness when the outage outlasts the lease', async () => {
    const watcher = host('w');
    const calls: PeerSnapshot[] = [];
    await watcher.reg.watch((p) => void calls.push(p));
    const p = host('p', 2);
    await p.reg.publish(record('p', '100.64.0.9'));
    await p.reg.startAlive();
    await waitFor(() => calls.at(-1)?.has('p'), 2000, 'peer p');
    const oldLease = await aliveLease('p');
    expect(oldLease).not.toBeNull();

    await etcd.stopProcess();
    await waitFor(() => p.msgs.includes('liveness lease lost; granting a new one'), 10_000, 'the lease to be declared lost');
    await etcd.startProcess();

    const fresh = await waitFor(async () => {
      const l = await aliveLease('p').catch(() => null);
      return l !== null && l !== oldLease ? l : null;
    }, 10_000, 'alive key on a new lease');
    // After two more TTLs the key is still there (keepalive on the new lease works) and p is a peer.
    await new Promise((r) => setTimeout(r, 4500));
    expect(await aliveLease('p')).toBe(fresh);
    await waitFor(() => watcher.reg.peers().has('p'), 3000, 'peer p again');
  });
});
