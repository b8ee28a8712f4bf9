import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backWithEtcd, bedEtcdctl } from '../helpers/bed-etcd';
import { networkKey } from '../../src/control/keys';
import { cliPath, issueHostCert, networkKeyFile, waitUntil, type Agent } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { runOk } from '../../src/testbed/run';
import { recoveryMs, startPings } from '../../src/testbed/traffic';

/**
 * An agent restarted while etcd does not answer comes back on its saved state (network spec,
 * cached peers) at once: etcd never holds up a working tunnel. Before, with etcd hung or cut off,
 * the first call for the network spec waited out its deadlines (20 s here) and the peer load
 * another 5 s: a host restarted during an etcd outage was unreachable for 26 s. With etcd stopped
 * (refused at once) it was 0.9-2.4 s, mostly waiting for handshakes: the restarted host, when its
 * key sorted higher, waited its turn to initiate, and its peer, which had dropped it at its bye,
 * answered only its retry.
 *
 *   refused   etcd stopped
 *   hung      etcd SIGSTOPped (connects succeed, nothing answers)
 *   dropped   nft drops h1's packets to etcd's port (connects hang)
 *
 * Bound: h2's pings (every 10 ms) answered within RESTART_MAX_MS of the respawn; then, with etcd
 * back, h1 reads it again and holds its liveness key within RECONNECT_MAX_MS (its longest backoff
 * round plus a call's deadline).
 */
const isRoot = process.getuid?.() === 0;
const RESTART_MAX_MS = 2_000;
const RECONNECT_MAX_MS = 40_000;
/**
 * A stop with etcd hung: the revoke of the liveness lease and the end of the watch wait about
 * 1 s each, at once (3.1 s before, one after the other with a 5 s revoke deadline).
 */
const STOP_MAX_MS = 2_000;

describe.skipIf(!isRoot)('an agent restarted while etcd does not answer', () => {
  let bed: MeshBed;
  const results: string[] = [];

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 2 }, agentOptions: { logLevel: process.env.CLADNET_TEST_LOG ?? 'info' } });
  }, 60_000);
  afterAll(async () => {
    if (results.length > 0) console.log(`restart of h1 with etcd away:\n  ${results.join('\n  ')}`);
    await bed?.destroy();
  });

  const nftIn = (ns: string, ...a: string[]) => bed.topo.exec(ns, ['nft', ...a]);
  const mtuOf = async (a: Agent) => (JSON.parse((await bed.topo.exec(a.host.ns, ['ip', '-j', 'link', 'show', 'dev', a.iface])).stdout) as { mtu: number }[])[0]!.mtu;
  /** The operator signs the network again with another MTU (a new serial). */
  const signMtu = (mtu: number) =>
    runOk(
      [
        ...['ip', 'netns', 'exec', bed.topo.routerNs, process.execPath, cliPath(), 'network', 'sign', bed.network],
        ...['--network-key', networkKeyFile(bed.topo, bed.network), '--cidr', bed.cidr, '--mtu', String(mtu), '--rewrite', '--etcd', bed.etcd.endpoint],
      ],
      { timeoutMs: 20_000 },
    );
  /** An etcd writer puts back a spec (JSON text) the network key signed earlier. */
  const putBack = async (spec: string) => {
    const put = await bedEtcdctl(bed, ['put', networkKey(bed.network), spec]);
    expect(put.code, put.stderr).toBe(0);
  };
  /** After a refusal: the agent runs on (no restart into the refused spec), its peer reaches it, and it saved `mtu`. */
  const runsOnWith = async (h1: Agent, mtu: number) => {
    await bed.waitUp();
    await new Promise((r) => setTimeout(r, 1_000));
    expect([h1.proc.exitCode, h1.proc.signalCode]).toEqual([null, null]);
    const state = JSON.parse(fs.readFileSync(path.join(h1.stateDir, 'state.json'), 'utf8')) as { network: { mtu: number } };
    expect(state.network.mtu).toBe(mtu);
  };
  /** The network spec as etcd holds it now (JSON text). */
  const specInEtcd = async () => {
    const got = await bedEtcdctl(bed, ['get', networkKey(bed.network), '--print-value-only']);
    expect(got.code, got.stderr).toBe(0);
    return got.stdout.trim();
  };

  const cases: { name: string; enter: (h1: Agent) => Promise<void>; leave: (h1: Agent) => Promise<void> }[] = [
    { name: 'refused (etcd stopped)', enter: () => bed.etcd.stop(), leave: () => bed.etcd.start() },
    {
      name: 'hung (etcd SIGSTOPped)',
      enter: async () => void process.kill(bed.etcd.pid()!, 'SIGSTOP'),
      leave: async () => void process.kill(bed.etcd.pid()!, 'SIGCONT'),
    },
    {
      name: "dropped (h1's packets to etcd)",
      enter: async (h1) => {
        await nftIn(h1.host.ns, 'add', 'table', 'inet', 'cnrestart');
        await nftIn(h1.host.ns, 'add', 'chain', 'inet', 'cnrestart', 'out', '{ type filter hook output priority 0 ; }');
        await nftIn(h1.host.ns, 'add', 'rule', 'inet', 'cnrestart', 'out', 'ip', 'daddr', bed.topo.routerIp, 'tcp', 'dport', new URL(bed.etcd.endpoint).port, 'drop');
      },
      leave: async (h1) => void (await nftIn(h1.host.ns, 'delete', 'table', 'inet', 'cnrestart')),
    },
  ];

  for (const c of cases) {
    it(`${c.name}: reachable again within ${RESTART_MAX_MS / 1000} s on its saved state, back with etcd once it answers`, async () => {
      let h1 = bed.agent('h1');
      const h2 = bed.agent('h2');
      await bed.waitUp();
      const overlay = (await h1.status()).self.overlayIp;
      const pings = startPings(bed.topo, h2.host.ns, overlay, { intervalMs: 10 });
      let left = false;
      try {
        expect(await h1.stop()).toEqual({ code: 0, signal: null });
        await c.enter(h1);
        const at = Date.now();
        h1 = await bed.start(h1.host, { issueCert: false, waitReady: false });
        const reply = await pings.waitReplyAfter(at, 15_000);
        const rec = recoveryMs((await pings.stop()).replies, at);
        const doc = await h1.status();
        results.push(`${c.name}: h2's pings answered ${rec === null ? 'never' : `${rec.toFixed(0)} ms`} after the respawn`);
        expect(reply, h1.logTail(20)).not.toBeNull();
        expect(rec!).toBeLessThan(RESTART_MAX_MS);
        expect(doc.etcd.connected).toBe(false);
        expect(doc.etcd.peersFrom).toBe('cache');
        expect(doc.peers.find((p) => p.name === 'h2')?.state).toBe('up');

        await c.leave(h1);
        left = true;
        const back = Date.now();
        await waitUntil('h1 back with etcd, its liveness key held', () => backWithEtcd(bed, h1), { timeoutMs: RECONNECT_MAX_MS, intervalMs: 250 });
        await waitUntil("h1's peers from etcd", async () => (await h1.status()).etcd.peersFrom === 'etcd', { timeoutMs: 5_000, intervalMs: 100 });
        results.push(`${c.name}: back with etcd ${((Date.now() - back) / 1000).toFixed(1)} s after it answered again`);
      } finally {
        await pings.stop();
        if (!left) await c.leave(h1);
      }
    }, 90_000);
  }

  it('a stop while etcd hangs takes at most STOP_MAX_MS, and the next start has its peers', async () => {
    const h1 = bed.agent('h1');
    await bed.waitUp();
    process.kill(bed.etcd.pid()!, 'SIGSTOP');
    let stoppedMs: number;
    try {
      const t0 = Date.now();
      expect(await h1.stop({ signal: 'SIGTERM', timeoutMs: 10_000 })).toEqual({ code: 0, signal: null });
      stoppedMs = Date.now() - t0;
    } finally {
      process.kill(bed.etcd.pid()!, 'SIGCONT');
    }
    results.push(`stop with etcd hung: ${stoppedMs} ms`);
    const again = await bed.start(h1.host, { issueCert: false });
    await bed.waitUp();
    expect(stoppedMs).toBeLessThan(STOP_MAX_MS);
    expect(again.logTail(50)).toMatch(/"msg":"agent up"/);
  }, 60_000);

  it('a network spec changed while the host was away, read after it started on the saved one: saved, and the agent stops so its service restarts on it', async () => {
    let h1 = bed.agent('h1');
    const before = await mtuOf(h1);
    expect(before).toBe(1420);
    expect(await h1.stop()).toEqual({ code: 0, signal: null });
    // The operator lowers the MTU (signed by the network key) while h1 is down...
    await signMtu(1380);
    // ... and etcd hangs before h1 is back: it starts on its saved spec.
    process.kill(bed.etcd.pid()!, 'SIGSTOP');
    let stopped = true;
    try {
      h1 = await bed.start(h1.host, { issueCert: false });
      expect(await mtuOf(h1)).toBe(1420);
      process.kill(bed.etcd.pid()!, 'SIGCONT');
      stopped = false;
      const exit = await Promise.race([h1.exited, new Promise<null>((r) => setTimeout(() => r(null), 20_000))]);
      expect(exit, h1.logTail(20)).toEqual({ code: 1, signal: null });
      expect(h1.logTail(20)).toMatch(/the network spec in etcd differs from the saved one this agent started on/);
      const state = JSON.parse(fs.readFileSync(path.join(h1.stateDir, 'state.json'), 'utf8')) as { network: { mtu: number } };
      expect(state.network.mtu).toBe(1380);
      // The restart (systemd's Restart=on-failure) runs on it, etcd answering or not.
      process.kill(bed.etcd.pid()!, 'SIGSTOP');
      stopped = true;
      h1 = await bed.start(h1.host, { issueCert: false });
      expect(await mtuOf(h1)).toBe(1380);
    } finally {
      if (stopped) process.kill(bed.etcd.pid()!, 'SIGCONT');
    }
  }, 90_000);

  it('an earlier spec the network key signed, put back by an etcd writer, is refused at start: the host keeps the newer one it ran with', async () => {
    let h1 = bed.agent('h1');
    const earlier = await specInEtcd();
    const mtu = (JSON.parse(earlier) as { mtu: number }).mtu === 1400 ? 1380 : 1400;
    // The operator signs a new MTU (a new serial) and h1 runs on it...
    expect(await h1.stop()).toEqual({ code: 0, signal: null });
    await signMtu(mtu);
    h1 = await bed.start(h1.host, { issueCert: false });
    expect(await mtuOf(h1)).toBe(mtu);
    expect(await h1.stop()).toEqual({ code: 0, signal: null });
    // ... then an etcd writer puts the earlier spec back: its signature is good, its serial older.
    await putBack(earlier);
    h1 = await bed.start(h1.host, { issueCert: false });
    expect(await mtuOf(h1)).toBe(mtu);
    expect(h1.logTail(50)).toMatch(/older than serial \d+ this host already ran with; refusing it .*keeping the last good spec from the saved state/);
    await runsOnWith(h1, mtu);
  }, 90_000);

  it('a host that never ran holds etcd\'s spec against the one in its certificate file: an earlier spec put back is refused', async () => {
    let h1 = bed.agent('h1');
    const earlier = await specInEtcd();
    const mtu = (JSON.parse(earlier) as { mtu: number }).mtu === 1360 ? 1340 : 1360;
    expect(await h1.stop()).toEqual({ code: 0, signal: null });
    // The operator signs a new MTU, then certifies h1 as a new host: host issue puts the spec it
    // verified into the certificate file (cloud-init ships that file to the VM).
    await signMtu(mtu);
    await issueHostCert(bed.topo, { name: 'h1', network: bed.network, etcd: bed.etcd.endpoint, out: h1.stateDir });
    const certFile = JSON.parse(fs.readFileSync(path.join(h1.stateDir, 'host.cert'), 'utf8')) as { spec?: { mtu: number } };
    expect(certFile.spec?.mtu).toBe(mtu);
    // An etcd writer puts the earlier spec back before the host's first start: nothing saved yet.
    await putBack(earlier);
    fs.rmSync(path.join(h1.stateDir, 'state.json'));
    h1 = await bed.start(h1.host, { issueCert: false });
    expect(await mtuOf(h1)).toBe(mtu);
    expect(h1.logTail(50)).toMatch(/older than serial \d+ in this host's certificate file .*keeping the last good spec from the certificate file/);
    await runsOnWith(h1, mtu);
  }, 90_000);
});
