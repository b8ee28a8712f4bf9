import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { sleep, waitUntil, type Agent } from '../../src/testbed/agents';
import { fetchStatus } from '../../src/status/client';
import { AGENT_NODE_FLAGS } from '../../src/agent/node-flags';
import { NotifyReceiver, type NotifyDatagram } from '../helpers/notify';

/**
 * The Type=notify path without systemd: the real agent in a test-bed namespace, started the way
 * a user would by hand (plain `node dist/cli.js agent`, `reexec: true`, so it re-executes itself with its Node
 * flags first), with NOTIFY_SOCKET pointing at a python3 receiver that records every datagram
 * and its sender's pid, WATCHDOG_USEC set, and WATCHDOG_PID exported by the launching shell as
 * systemd would (the shell execs the agent: one pid all the way, through the re-exec too).
 * Like the unit's CapabilityBoundingSet=CAP_NET_ADMIN and NoNewPrivileges=yes, setpriv leaves the
 * agent CAP_NET_ADMIN and nothing else: it must still come up and mesh.
 */
const isRoot = process.getuid?.() === 0;
const WATCHDOG_MS = 1_000;
const STALL_MS = 4_000;

describe.skipIf(!isRoot)('systemd notify protocol (Type=notify, watchdog) from a real agent', () => {
  let bed: MeshBed;
  let recv: NotifyReceiver;
  let h3: Agent;
  /** What the test saw at the moment READY=1 arrived. */
  let atReady: { statusOk: boolean; peers: number; link: boolean; error?: string } | undefined;
  let readyDatagram: NotifyDatagram | undefined;

  beforeAll(async () => {
    bed = await startMeshBed({ topology: { hosts: 3 }, agents: 2 });
    await bed.waitUp();
    const sock = path.join(bed.topo.workDir, 'notify.sock');
    recv = await NotifyReceiver.start(sock);
    const host = bed.topo.host('h3');
    const socket = path.join(bed.topo.workDir, 'agents', 'h3', 'cladnet.sock');
    // At the moment READY=1 arrives: does the status socket answer, is the TUN there, how many peers?
    let probe: Promise<void> | undefined;
    recv.onDatagram = (d) => {
      if (probe || !d.msg.split('\n').includes('READY=1')) return;
      readyDatagram = d;
      probe = (async () => {
        try {
          const doc = await fetchStatus(socket, 2_000);
          const link = await bed.topo.tryExec(host.ns, ['ip', 'link', 'show', 'dev', 'cladnet0']);
          atReady = { statusOk: true, peers: doc.peers.length, link: link.code === 0 };
        } catch (e) {
          atReady = { statusOk: false, peers: -1, link: false, error: (e as Error).message };
        }
      })();
    };
    h3 = await bed.start(host, {
      waitReady: false,
      reexec: true,
      env: {
        NOTIFY_SOCKET: sock,
        WATCHDOG_USEC: String(WATCHDOG_MS * 1000),
        CLADNET_TEST_HOOKS: '1',
        CLADNET_TEST_STALL_MS: String(STALL_MS),
      },
      // As the unit runs it: root with CAP_NET_ADMIN as the only capability, no new privileges.
      launcher: ['setpriv', '--bounding-set=-all,+net_admin', '--inh-caps=-all', '--no-new-privs', 'sh', '-c', 'export WATCHDOG_PID=$$; exec "$0" "$@"'],
    });
    await recv.waitFor(/^READY=1$/, 30_000).catch((e: Error) => {
      throw new Error(`${e.message}\n${h3.logTail()}`);
    });
    await waitUntil('the READY probe', async () => atReady, { timeoutMs: 5_000 });
  }, 90_000);

  afterAll(async () => {
    await bed?.destroy();
    await recv?.stop();
  });

  it('sends READY=1 once, after the TUN is up, the peer set is loaded and the status socket answers', () => {
    expect(atReady).toEqual({ statusOk: true, peers: 2, link: true });
    expect(recv.fields().filter((f) => f === 'READY=1')).toHaveLength(1);
    // Nothing before READY=1 (a STATUS= before it would be harmless, a WATCHDOG=1 would not).
    expect(recv.got.indexOf(readyDatagram!)).toBe(0);
    // The first STATUS= comes with READY=1 and already counts the two peers etcd listed.
    expect(readyDatagram!.msg).toMatch(/^READY=1\nSTATUS=2 peers, [0-2] up, etcd connected$/);
  });

  it('sends every datagram from the agent\'s own pid, after the re-exec with its Node flags (NotifyAccess=main holds)', () => {
    const argv = fs.readFileSync(`/proc/${h3.proc.pid}/cmdline`, 'utf8').split('\0');
    expect(argv).toEqual(expect.arrayContaining([...AGENT_NODE_FLAGS, 'agent']));
    const env = fs.readFileSync(`/proc/${h3.proc.pid}/environ`, 'utf8').split('\0');
    expect(env).toEqual(expect.arrayContaining([`WATCHDOG_PID=${h3.proc.pid}`, `WATCHDOG_USEC=${WATCHDOG_MS * 1000}`, 'CLADNET_REEXEC=1']));
    expect(new Set(recv.got.map((d) => d.pid))).toEqual(new Set([h3.proc.pid]));
  });

  it('keeps STATUS= current: both peers come up, and one leaving is counted', async () => {
    await recv.waitFor(/^STATUS=2 peers, 2 up, etcd connected$/, 15_000);
    // ... with CAP_NET_ADMIN as its only capability (CapabilityBoundingSet=CAP_NET_ADMIN is enough).
    const caps = fs.readFileSync(`/proc/${h3.proc.pid}/status`, 'utf8');
    expect(caps).toMatch(/^CapBnd:\s+0000000000001000$/m);
    expect(caps).toMatch(/^CapEff:\s+0000000000001000$/m);
    expect(caps).toMatch(/^NoNewPrivs:\s+1$/m);
    const from = recv.got.length;
    await bed.agent('h1').stop();
    await recv.waitFor(/^STATUS=1 peer, 1 up, etcd connected$/, 15_000, from);
    // On change only: no two STATUS= lines in a row say the same.
    const statuses = recv.fields().filter((f) => f.startsWith('STATUS='));
    for (let i = 1; i < statuses.length; i++) expect(statuses[i]).not.toBe(statuses[i - 1]);
  });

  it('pings WATCHDOG=1 less than WATCHDOG_USEC apart while the data plane runs, none while it is wedged, then again', async () => {
    const pings = () => recv.got.filter((d) => d.msg.split('\n').includes('WATCHDOG=1')).map((d) => d.at);
    const t0 = performance.now();
    await sleep(3 * WATCHDOG_MS);
    const healthy = pings().filter((t) => t >= t0);
    expect(healthy.length).toBeGreaterThanOrEqual(4);
    for (let i = 1; i < healthy.length; i++) expect(healthy[i]! - healthy[i - 1]!).toBeLessThan(WATCHDOG_MS);

    // The test hook blocks the worker thread for STALL_MS; the heartbeat stops, so must the pings.
    const stalledAt = performance.now();
    h3.proc.kill('SIGUSR2');
    await sleep(STALL_MS + 2 * WATCHDOG_MS);
    // A ping may still leave within a tick or two of the signal (its beat came before the stall,
    // and a loaded machine may take a moment to deliver the signal and the stall message).
    const during = pings().filter((t) => t > stalledAt + WATCHDOG_MS + 200 && t < stalledAt + STALL_MS - 200);
    expect(during).toEqual([]);
    const after = pings().filter((t) => t > stalledAt + STALL_MS);
    expect(after.length).toBeGreaterThanOrEqual(1);
    expect(h3.logTail(50)).toMatch(/data-plane heartbeat stopped; withholding watchdog pings/);
  }, 30_000);

  it('sends STOPPING=1 on SIGTERM and nothing after it', async () => {
    const from = recv.got.length;
    const exit = await h3.stop();
    expect(exit.code).toBe(0);
    await recv.waitFor(/^STOPPING=1$/, 5_000, from);
    const last = recv.got.at(-1)!;
    expect(last.msg.split('\n')).toContain('STOPPING=1');
  });
});
