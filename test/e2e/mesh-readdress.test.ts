import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatBed, type MeshBed } from '../../src/testbed/mesh';
import { listConntrack, replaceAddressTimed } from '../../src/testbed/roam';
import { recoveryMs, startPings } from '../../src/testbed/traffic';

const isRoot = process.getuid?.() === 0;
const RUNS = Number(process.env['CLADNET_READDRESS_RUNS'] ?? 10);
// The MASQUERADE sites have no firewall by default (a plain masquerade rule, as in the issue's own
// setup: pub's packets from its new address leave conntrack entries there, and the pinger's packets
// to it get another source port); CLADNET_READDRESS_FIREWALL=1 drops unsolicited packets instead.
// The pinger is a in runs 1, 2, 5, 6, ... and b in the others, or CLADNET_READDRESS_PINGER.
const PINGER = process.env['CLADNET_READDRESS_PINGER'];
const FIREWALL = process.env['CLADNET_READDRESS_FIREWALL'] === '1';

/**
 * Issue 16, "address-change recovery is bimodal": five hosts (pub on the internet with --relay,
 * a and b behind two MASQUERADE NATs, c and d behind two port-randomizing NATs). While a or b pings
 * pub's overlay address every 10 ms, pub's underlay address is replaced (new address added, old
 * one removed, default route re-pointed: in one batch in even runs, as three commands 200 or
 * 400 ms apart in odd ones). Recovery = from the old address's removal to the first reply to a
 * ping sent after it. Every run is printed; each must be under 1 s.
 *
 * (First runs, 2026-12-02, 8 runs each, with firewalled NATs and a pinging: 74-596 ms. With no
 * firewall and b pinging, 2-3 runs of 10 took 3.1-10.8 s: the peer's old address, alive on its last
 * evidence, won the path choice by round trip over the new one that answered; fixed in paths.ts.)
 */
describe.skipIf(!isRoot)('address change on the relay host', () => {
  let bed: MeshBed;

  beforeAll(async () => {
    ({ bed } = await startNatBed({
      topology: {
        hosts: [{ name: 'pub' }, { name: 'a', site: 's1' }, { name: 'b', site: 's2' }, { name: 'c', site: 's3' }, { name: 'd', site: 's4' }],
        sites: [
          { name: 's1', nat: 'masquerade', firewall: FIREWALL },
          { name: 's2', nat: 'masquerade', firewall: FIREWALL },
          { name: 's3', nat: 'random' },
          { name: 's4', nat: 'random' },
        ],
      },
      relay: 'pub',
    }));
  }, 90_000);

  afterAll(async () => {
    await bed?.destroy();
  }, 60_000);

  it(`recovers in under 1 s, ${RUNS} runs out of ${RUNS}`, async () => {
    const pubIp = (await bed.agent('pub').status()).self.overlayIp;
    const results: number[] = [];
    for (let run = 0; run < RUNS; run++) {
      const pinger = PINGER ?? (run % 4 < 2 ? 'a' : 'b');
      const pings = startPings(bed.topo, bed.topo.host(pinger).ns, pubIp, { intervalMs: 10 });
      await new Promise((r) => setTimeout(r, 1_000));
      const stepMs = run % 2 === 0 ? undefined : 100 + 100 * (run % 4);
      const moved = await replaceAddressTimed(bed.topo, 'pub', undefined, { stepMs });
      await pings.waitReplyAfter(moved.at, 15_000);
      await new Promise((r) => setTimeout(r, 500));
      const series = await pings.stop();
      const rec = recoveryMs(series.replies, moved.at);
      results.push(rec ?? Infinity);
      if ((rec ?? Infinity) >= 1_000) {
        const site = bed.topo.plan.hosts.find((h) => h.name === pinger)!.site!;
        const ct = (await listConntrack(bed.topo, site)).filter((l) => l.includes(moved.ip));
        console.log(`slow run: ${site} conntrack toward ${moved.ip}:\n${ct.join('\n')}\n--- ${pinger}\n${bed.agent(pinger).logTail(25)}\n--- pub\n${bed.agent('pub').logTail(25)}`);
      }
      console.log(`run ${run + 1}: ${pinger} pings, pub moved to ${moved.ip} (${stepMs === undefined ? 'one batch' : `steps ${stepMs} ms apart`}), recovery ${rec === null ? 'none' : `${rec.toFixed(0)} ms`}`);
      await new Promise((r) => setTimeout(r, 1_500));
    }
    expect(results.filter((r) => r >= 1_000)).toEqual([]);
  }, 600_000);
});
